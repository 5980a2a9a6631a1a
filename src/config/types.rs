//! The config types: one struct per `[section]`, every key with a default
//! (contract sections 7 and 8). Secrets are [`Secret`]/[`SecretUrl`], so every
//! struct derives `Debug` without leaking one.

use super::secret::{Secret, SecretUrl};
pub use crate::stats::CounterRule;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole configuration. Every section and key has a default, so an empty
/// file (or none at all) is a valid configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub ingest: IngestConfig,
    pub persist: PersistConfig,
    pub stats: StatsConfig,
    pub ws: WsConfig,
    pub activity: ActivityConfig,
    pub telemetry: TelemetryConfig,
    pub broadcast: BroadcastConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on. Restart-only.
    pub listen: String,
    /// Origins allowed to open the dashboard WebSocket; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Take the client IP from the first `X-Forwarded-For` hop (only behind a
    /// proxy that sets it).
    pub trust_forwarded_for: bool,
    /// Seconds to wait for in-flight work at shutdown before giving up.
    pub shutdown_timeout_secs: u64,
    /// A connection that starts no request for this long is closed, also
    /// before its first byte (idle sockets otherwise pin file descriptors).
    /// Live for new connections.
    pub idle_timeout_secs: u64,
    /// From the first byte of a request to its last (head and body); a late
    /// request gets 408 `request_timeout` and is closed. Live for new
    /// connections.
    pub request_timeout_secs: u64,
    /// A response must be taken by the client within this, else the
    /// connection closes (WebSockets excepted): the clock runs while a write
    /// waits for the client and restarts whenever the client takes some of
    /// the response, so a slow reader is not cut, one that stopped is. Live
    /// for new connections.
    pub write_timeout_secs: u64,
    /// Open TCP connections (HTTP and WebSocket) on `listen` beyond this are
    /// closed at accept; 0: 90% of the open-file limit, which also caps any
    /// larger value. Live.
    pub max_http_connections: usize,
    /// This replica's name among the replicas of a cluster (contract section
    /// 8); empty: `<hostname>:<port>`. Restart-only.
    pub replica_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8790".into(),
            allowed_origins: Vec::new(),
            trust_forwarded_for: false,
            shutdown_timeout_secs: 8,
            idle_timeout_secs: 10,
            request_timeout_secs: 30,
            write_timeout_secs: 30,
            max_http_connections: 0,
            replica_name: String::new(),
        }
    }
}

/// Bearer tokens ([`Secret`]s: `Debug` never prints them).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuthConfig {
    /// Tokens accepted on `POST /api/v1/ingest`; empty: ingest is open.
    pub ingest_tokens: Vec<Secret>,
    /// Tokens accepted on the dashboard WebSocket and read APIs; empty: open.
    pub dashboard_tokens: Vec<Secret>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct IngestConfig {
    /// Most events in one request.
    pub max_batch: usize,
    /// Largest request body, in bytes; enforced while reading.
    pub max_body_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { max_batch: 1000, max_body_bytes: 1024 * 1024 }
    }
}

/// Which persist plugin stores the events.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    #[default]
    Sqlite,
    Postgres,
    Jsonl,
    Webhook,
    Memory,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Jsonl => "jsonl",
            Self::Webhook => "webhook",
            Self::Memory => "memory",
        }
    }
}

/// When a 202 is sent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the plugin stored every event of the request.
    #[default]
    Durable,
    /// After the events entered the bounded in-memory queue.
    Queued,
}

/// `[persist]`: the plugin and its settings. Plugin-specific keys are flat
/// (`sqlite_path`, `jsonl_path`, `webhook_url`, ...) as the contract shows.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct PersistConfig {
    pub plugin: PluginKind,
    pub ack: AckMode,
    /// Most events waiting for the plugin; a full queue answers 503.
    pub queue_len: usize,
    /// Most bytes of event data waiting for the plugin (a second bound, so
    /// `queue_len` large events cannot exhaust memory); full answers 503.
    pub queue_max_bytes: usize,
    /// SQLite database file (created with its folder).
    pub sqlite_path: PathBuf,
    /// `normal` survives a crash or `kill -9` of the process; `full` also
    /// survives a power loss, at the cost of an fsync per group commit.
    pub sqlite_synchronous: SqliteSync,
    /// JSON-lines file the `jsonl` plugin appends to.
    pub jsonl_path: PathBuf,
    /// Rotate the JSONL file when it reaches this size.
    pub jsonl_max_bytes: u64,
    /// Rotated JSONL files kept (`path.1` newest ... `path.N` oldest).
    pub jsonl_max_files: u32,
    /// Where the `webhook` plugin POSTs batches (may carry credentials: never logged).
    pub webhook_url: SecretUrl,
    /// Per-attempt timeout of a webhook POST.
    pub webhook_timeout_ms: u64,
    /// Retries after the first failed attempt (exponential backoff with jitter).
    pub webhook_max_retries: u32,
    /// First backoff delay; doubles each retry.
    pub webhook_backoff_ms: u64,
    /// Events the `memory` plugin keeps (oldest dropped first).
    pub memory_capacity: usize,
    /// PostgreSQL DSN for the `postgres` plugin (never logged).
    pub postgres_url: SecretUrl,
    /// Most connections the `postgres` plugin opens (1..=1000).
    pub postgres_pool_size: u32,
    /// Remove events stored longer ago than this (`"30d"`, `"12h"`; `"off"`).
    /// Live-reloadable, like the other `retention_*` keys.
    pub retention_max_age: String,
    /// Keep at most this many events; 0: no limit.
    pub retention_max_events: u64,
    /// Keep the store at most this large (`"2GiB"`, `"500MB"` or bytes); 0: no limit.
    pub retention_max_bytes: ByteSize,
}

/// A byte size written as a number of bytes or a string with a unit
/// (see [`crate::retention::parse_size`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl Default for ByteSize {
    fn default() -> Self {
        ByteSize::Bytes(0)
    }
}

impl ByteSize {
    /// The size in bytes; `None` for 0 (no limit).
    pub fn parse(&self) -> Result<Option<u64>, String> {
        match self {
            ByteSize::Bytes(n) => Ok((*n > 0).then_some(*n)),
            ByteSize::Text(t) => crate::retention::parse_size(t),
        }
    }
}

impl PersistConfig {
    /// The retention limits (invalid values, which validation reports, count
    /// as no limit).
    pub fn retention(&self) -> crate::retention::Retention {
        crate::retention::Retention {
            max_age: crate::retention::parse_duration(&self.retention_max_age).ok().flatten(),
            max_events: (self.retention_max_events > 0).then_some(self.retention_max_events),
            max_bytes: self.retention_max_bytes.parse().ok().flatten(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    #[default]
    Normal,
    Full,
}

impl Default for PersistConfig {
    fn default() -> Self {
        Self {
            plugin: PluginKind::Sqlite,
            ack: AckMode::Durable,
            queue_len: 100_000,
            queue_max_bytes: 256 * 1024 * 1024,
            sqlite_path: "data/sidewire.db".into(),
            sqlite_synchronous: SqliteSync::Normal,
            jsonl_path: "data/events.jsonl".into(),
            jsonl_max_bytes: 100 * 1024 * 1024,
            jsonl_max_files: 5,
            webhook_url: SecretUrl::default(),
            webhook_timeout_ms: 5_000,
            webhook_max_retries: 3,
            webhook_backoff_ms: 200,
            memory_capacity: 100_000,
            postgres_url: SecretUrl::default(),
            postgres_pool_size: 16,
            retention_max_age: "30d".into(),
            retention_max_events: 0,
            retention_max_bytes: ByteSize::Bytes(0),
        }
    }
}

/// `[stats]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct StatsConfig {
    /// Seconds between `stats_update` pushes.
    pub interval_secs: u64,
    /// Least time between two pushes caused by gauge changes.
    pub min_push_interval_ms: u64,
    /// Counter rules; `None` (key absent) means the three default counters.
    pub counters: Option<Vec<CounterRule>>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { interval_secs: 5, min_push_interval_ms: 250, counters: None }
    }
}

impl StatsConfig {
    /// The rules in force: the configured ones, or the contract's defaults.
    pub fn counter_rules(&self) -> Vec<CounterRule> {
        match &self.counters {
            Some(rules) => rules.clone(),
            None => CounterRule::defaults(),
        }
    }
}

/// `[ws]`: dashboard WebSocket limits. Changes apply to new connections.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct WsConfig {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub connect_rate_per_ip_per_min: u32,
    /// Messages queued per connection before it is closed as a slow consumer.
    pub send_queue_len: usize,
    /// Most events replayed on resume.
    pub max_replay: usize,
    pub ping_interval_secs: u64,
    pub pong_timeout_secs: u64,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 10,
            connect_rate_per_ip_per_min: 60,
            send_queue_len: 1024,
            max_replay: 10_000,
            ping_interval_secs: 30,
            pong_timeout_secs: 10,
        }
    }
}

/// `[activity]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ActivityConfig {
    /// Events kept in memory for plugins that cannot answer queries.
    pub buffer_size: usize,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        Self { buffer_size: 10_000 }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TelemetryConfig {
    /// A `tracing` filter, e.g. `info` or `sidewire=debug,warp=info`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint; empty disables OpenTelemetry export.
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_level: "info".into(), log_format: LogFormat::Pretty, otlp_endpoint: String::new() }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BroadcastBackend {
    #[default]
    Local,
    Redis,
    Postgres,
}

/// `[metrics]`: where Prometheus scrapes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct MetricsConfig {
    /// A separate `IP:port` serving only `GET /metrics` (and `/healthz`), so
    /// metrics need not share the public port; `/metrics` then leaves the
    /// public port. Empty: `/metrics` is on `server.listen`. Restart-only.
    pub listen: String,
}

impl MetricsConfig {
    /// The separate metrics address, if one is set.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen.trim().parse().map(Some).map_err(|e| format!("`{}` is not an IP:port address: {e}", self.listen))
    }
}

/// `[broadcast]`: how replicas share one event stream (contract section 8).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct BroadcastConfig {
    /// `local` (one process), `redis` or `postgres` (both need
    /// `persist.plugin = "postgres"`: replicas share one store).
    pub backend: BroadcastBackend,
    /// Redis server for `backend = "redis"` (never logged with its password);
    /// `rediss://` for TLS.
    pub redis_url: SecretUrl,
    /// PEM file of the CA that signed the Redis server's certificate
    /// (`rediss://`); empty: the system roots.
    pub redis_ca_file: PathBuf,
    /// `rediss://` without verifying the server's certificate (unsafe;
    /// warned at start).
    pub redis_tls_insecure: bool,
    /// Prefix of Redis keys and channels; replicas sharing store and prefix
    /// form one cluster.
    pub prefix: String,
}

impl Default for BroadcastConfig {
    fn default() -> Self {
        Self {
            backend: BroadcastBackend::Local,
            redis_url: SecretUrl::default(),
            redis_ca_file: PathBuf::new(),
            redis_tls_insecure: false,
            prefix: "sidewire".into(),
        }
    }
}

impl Config {
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.server.listen.parse().map_err(|e| format!("`{}` is not an IP:port address: {e}", self.server.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_in_debug() {
        let mut c = Config::default();
        c.auth.ingest_tokens = vec!["s3cret".into()];
        c.auth.dashboard_tokens = vec!["dash-s3cret".into()];
        c.persist.webhook_url = "https://user:pw@example.test/hook?key=zz".into();
        c.persist.postgres_url = "postgres://app:pgpw@db/sidewire".into();
        c.broadcast.redis_url = "redis://:redispw@cache:6379/0".into();
        let dbg = format!("{c:?}");
        for secret in ["s3cret", "pw@", "zz", "pgpw", "redispw"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(dbg.contains("example.test/hook") && dbg.contains("db/sidewire") && dbg.contains("cache:6379/0"));
        // Derived, so no field is left out (the hand-written one had dropped this).
        assert!(dbg.contains("webhook_backoff_ms: 200"), "{dbg}");
    }

    #[test]
    fn cluster_keys_have_the_contract_defaults() {
        let c = Config::default();
        assert_eq!(c.server.replica_name, "");
        assert_eq!(c.persist.postgres_pool_size, 16);
        assert_eq!((c.broadcast.backend, c.broadcast.prefix.as_str()), (BroadcastBackend::Local, "sidewire"));
    }
}
