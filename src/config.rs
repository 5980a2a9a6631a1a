//! Configuration: one TOML file (contract section 7), typed, validated at load
//! with every error named by key and line, and overridable per key through
//! `SIDEWIRE__SECTION__KEY` environment variables.
//!
//! Loading is pure (text in, [`Config`] or a list of [`ConfigIssue`]s out);
//! building the plugins and listeners from it is done elsewhere.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Open TCP connections (HTTP and WebSocket) on `listen` beyond this are
    /// closed at accept; 0: 90% of the open-file limit, which also caps any
    /// larger value. Live.
    pub max_http_connections: usize,
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
            max_http_connections: 0,
        }
    }
}

/// Bearer tokens. `Debug` never prints them.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuthConfig {
    /// Tokens accepted on `POST /api/v1/ingest`; empty: ingest is open.
    pub ingest_tokens: Vec<String>,
    /// Tokens accepted on the dashboard WebSocket and read APIs; empty: open.
    pub dashboard_tokens: Vec<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("ingest_tokens", &format_args!("[{} redacted]", self.ingest_tokens.len()))
            .field("dashboard_tokens", &format_args!("[{} redacted]", self.dashboard_tokens.len()))
            .finish()
    }
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
#[derive(Clone, Deserialize, PartialEq)]
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
    pub webhook_url: String,
    /// Per-attempt timeout of a webhook POST.
    pub webhook_timeout_ms: u64,
    /// Retries after the first failed attempt (exponential backoff with jitter).
    pub webhook_max_retries: u32,
    /// First backoff delay; doubles each retry.
    pub webhook_backoff_ms: u64,
    /// Events the `memory` plugin keeps (oldest dropped first).
    pub memory_capacity: usize,
    /// PostgreSQL DSN for the `postgres` plugin (never logged).
    pub postgres_url: String,
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

    /// `self` without the live-reloadable keys, to compare what needs a restart.
    pub fn without_live_keys(&self) -> PersistConfig {
        let d = PersistConfig::default();
        PersistConfig {
            retention_max_age: d.retention_max_age,
            retention_max_events: d.retention_max_events,
            retention_max_bytes: d.retention_max_bytes,
            ..self.clone()
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
            webhook_url: String::new(),
            webhook_timeout_ms: 5_000,
            webhook_max_retries: 3,
            webhook_backoff_ms: 200,
            memory_capacity: 100_000,
            postgres_url: String::new(),
            retention_max_age: "30d".into(),
            retention_max_events: 0,
            retention_max_bytes: ByteSize::Bytes(0),
        }
    }
}

impl fmt::Debug for PersistConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistConfig")
            .field("plugin", &self.plugin)
            .field("ack", &self.ack)
            .field("queue_len", &self.queue_len)
            .field("queue_max_bytes", &self.queue_max_bytes)
            .field("sqlite_path", &self.sqlite_path)
            .field("sqlite_synchronous", &self.sqlite_synchronous)
            .field("jsonl_path", &self.jsonl_path)
            .field("jsonl_max_bytes", &self.jsonl_max_bytes)
            .field("jsonl_max_files", &self.jsonl_max_files)
            .field("webhook_url", &redact_url(&self.webhook_url))
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("webhook_max_retries", &self.webhook_max_retries)
            .field("memory_capacity", &self.memory_capacity)
            .field("postgres_url", &redact_url(&self.postgres_url))
            .field("retention_max_age", &self.retention_max_age)
            .field("retention_max_events", &self.retention_max_events)
            .field("retention_max_bytes", &self.retention_max_bytes)
            .finish()
    }
}

/// A URL fit for logs: scheme, host and path, never credentials or query.
pub fn redact_url(url: &str) -> String {
    if url.is_empty() {
        return String::new();
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_string(),
    };
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
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

/// `[[stats.counters]]`: a counter that moves on events of one type.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CounterRule {
    /// Stat name (camelCase by convention), `^[A-Za-z][A-Za-z0-9_]{0,63}$`.
    pub name: String,
    /// Event type that moves it.
    pub on: String,
    /// Dotted path (`data.filesProcessed`) of a number to add; else `default`.
    #[serde(default)]
    pub add: Option<String>,
    /// Added when `add` is unset or does not name a number.
    #[serde(default = "one")]
    pub default: f64,
}

fn one() -> f64 {
    1.0
}

impl CounterRule {
    pub fn defaults() -> Vec<CounterRule> {
        vec![
            CounterRule {
                name: "filesProcessed".into(),
                on: "ingestion_complete".into(),
                add: Some("data.filesProcessed".into()),
                default: 1.0,
            },
            CounterRule { name: "queriesCompleted".into(), on: "query_complete".into(), add: None, default: 1.0 },
            CounterRule { name: "errors".into(), on: "error".into(), add: None, default: 1.0 },
        ]
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

/// `[broadcast]`: how replicas share one event stream.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct BroadcastConfig {
    pub backend: BroadcastBackend,
    pub redis_url: String,
}

impl fmt::Debug for BroadcastConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastConfig")
            .field("backend", &self.backend)
            .field("redis_url", &redact_url(&self.redis_url))
            .finish()
    }
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `ws.max_connections`; empty for a syntax error.
    pub key: String,
    /// 1-based line in the file, when the key is written there.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: `{}`: {}", self.key, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "`{}`: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Loading failed; every issue found is listed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::sync::Arc<std::io::Error> },
    #[error("invalid config{}:\n{}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default(), list(.issues))]
    Invalid { path: Option<PathBuf>, issues: Vec<ConfigIssue> },
}

fn list(issues: &[ConfigIssue]) -> String {
    issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n")
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// No file: the built-in defaults (plus environment overrides).
    Defaults,
}

/// The default config file path.
pub const DEFAULT_PATH: &str = "config/sidewire.toml";

impl Config {
    /// Parses and validates TOML text, applying `env` overrides
    /// (`SIDEWIRE__SECTION__KEY`, value parsed as TOML, else taken as a string).
    pub fn from_toml(text: &str, env: &[(String, String)]) -> Result<Config, Vec<ConfigIssue>> {
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => return Err(vec![issue_from_toml(text, "", &e)]),
        };
        let mut issues = apply_env(&mut table, env);
        let mut unknown = Vec::new();
        // serde_ignored collects every unknown key; serde_path_to_error names
        // the key of a type error.
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
            toml::Value::Table(table),
            &mut |path: serde_ignored::Path<'_>| unknown.push(path.to_string()),
        ));
        for key in unknown {
            issues.push(ConfigIssue { line: line_of(text, &key), key, message: "unknown key".into() });
        }
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                let key = e.path().to_string();
                let message = clean_message(&e.inner().to_string());
                issues.push(ConfigIssue { line: line_of(text, &key), message, key });
                return Err(issues);
            }
        };
        for (key, message) in config.validate() {
            issues.push(ConfigIssue { line: line_of(text, &key), key, message });
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(issues)
        }
    }

    /// Loads `path`, or the defaults when `path` is `None` and the default
    /// file does not exist. Environment overrides come from the process.
    pub fn load(path: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                let config =
                    Config::from_toml("", &env).map_err(|issues| ConfigError::Invalid { path: None, issues })?;
                return Ok((config, ConfigSource::Defaults));
            }
            Err(e) => return Err(ConfigError::Read { path, source: std::sync::Arc::new(e) }),
        };
        match Config::from_toml(&text, &env) {
            Ok(c) => Ok((c, ConfigSource::File(path))),
            Err(issues) => Err(ConfigError::Invalid { path: Some(path), issues }),
        }
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.server.listen.parse().map_err(|e| format!("`{}` is not an IP:port address: {e}", self.server.listen))
    }

    /// Semantic checks, all at once: (dotted key, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut bad = |k: &str, m: String| out.push((k.to_string(), m));
        if let Err(e) = self.listen_addr() {
            bad("server.listen", e);
        }
        match (self.metrics.listen_addr(), self.listen_addr()) {
            (Err(e), _) => bad("metrics.listen", e),
            (Ok(Some(m)), Ok(l)) if m == l => bad("metrics.listen", "must differ from server.listen".into()),
            _ => {}
        }
        for (k, v) in [
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            ("server.request_timeout_secs", self.server.request_timeout_secs),
        ] {
            if v == 0 || v > 86_400 {
                bad(k, "must be between 1 and 86400".into());
            }
        }
        if self.ingest.max_batch == 0 {
            bad("ingest.max_batch", "must be at least 1".into());
        }
        if self.ingest.max_body_bytes < 1024 {
            bad("ingest.max_body_bytes", "must be at least 1024".into());
        }
        for (k, list) in
            [("auth.ingest_tokens", &self.auth.ingest_tokens), ("auth.dashboard_tokens", &self.auth.dashboard_tokens)]
        {
            if list.iter().any(|t| t.is_empty() || t.chars().any(|c| !c.is_ascii_graphic())) {
                bad(k, "tokens must be non-empty printable ASCII without spaces".into());
            }
        }
        let p = &self.persist;
        if p.queue_len == 0 {
            bad("persist.queue_len", "must be at least 1".into());
        }
        if p.queue_max_bytes < self.ingest.max_body_bytes {
            bad("persist.queue_max_bytes", "must be at least ingest.max_body_bytes".into());
        }
        if p.queue_max_bytes > u32::MAX as usize {
            bad("persist.queue_max_bytes", format!("must be at most {}", u32::MAX));
        }
        match p.plugin {
            PluginKind::Sqlite if p.sqlite_path.as_os_str().is_empty() => {
                bad("persist.sqlite_path", "required by plugin \"sqlite\"".into())
            }
            PluginKind::Jsonl if p.jsonl_path.as_os_str().is_empty() => {
                bad("persist.jsonl_path", "required by plugin \"jsonl\"".into())
            }
            PluginKind::Webhook if !(p.webhook_url.starts_with("http://") || p.webhook_url.starts_with("https://")) => {
                bad("persist.webhook_url", "plugin \"webhook\" needs an http:// or https:// URL".into())
            }
            PluginKind::Postgres => bad(
                "persist.plugin",
                "\"postgres\" is not available in this version yet; use sqlite, jsonl, webhook or memory".into(),
            ),
            _ => {}
        }
        if p.memory_capacity == 0 {
            bad("persist.memory_capacity", "must be at least 1".into());
        }
        if p.jsonl_max_bytes < 4096 {
            bad("persist.jsonl_max_bytes", "must be at least 4096".into());
        }
        if let Err(e) = crate::retention::parse_duration(&p.retention_max_age) {
            bad("persist.retention_max_age", e);
        }
        if let Err(e) = p.retention_max_bytes.parse() {
            bad("persist.retention_max_bytes", e);
        }
        if p.webhook_timeout_ms == 0 {
            bad("persist.webhook_timeout_ms", "must be at least 1".into());
        }
        if self.stats.interval_secs == 0 || self.stats.interval_secs > 3600 {
            bad("stats.interval_secs", "must be between 1 and 3600".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.stats.counter_rules().iter().enumerate() {
            let key = format!("stats.counters[{i}]");
            if !crate::event::is_stat_name(&rule.name) {
                bad(&key, format!("name `{}` must match ^[A-Za-z][A-Za-z0-9_]{{0,63}}$", rule.name));
            } else if crate::stats::BUILTIN_STATS.contains(&rule.name.as_str()) {
                bad(&key, format!("name `{}` is a built-in stat", rule.name));
            } else if !names.insert(rule.name.clone()) {
                bad(&key, format!("name `{}` is defined twice", rule.name));
            }
            if !crate::event::is_event_type(&rule.on) {
                bad(&key, format!("`on` = `{}` is not a valid event type", rule.on));
            }
            if let Some(path) = &rule.add {
                if !path.starts_with("data.") || path.len() <= 5 || path.split('.').any(str::is_empty) {
                    bad(&key, format!("`add` = `{path}` must be a dotted path under data, e.g. data.filesProcessed"));
                }
            }
            if !rule.default.is_finite() {
                bad(&key, "`default` must be a finite number".into());
            }
        }
        let w = &self.ws;
        for (k, v) in [
            ("ws.max_connections", w.max_connections),
            ("ws.max_connections_per_ip", w.max_connections_per_ip),
            ("ws.send_queue_len", w.send_queue_len),
            ("ws.ping_interval_secs", w.ping_interval_secs as usize),
            ("ws.pong_timeout_secs", w.pong_timeout_secs as usize),
        ] {
            if v == 0 {
                bad(k, "must be at least 1".into());
            }
        }
        if w.send_queue_len > 65_536 {
            bad("ws.send_queue_len", "must be at most 65536".into());
        }
        if w.connect_rate_per_ip_per_min == 0 {
            bad("ws.connect_rate_per_ip_per_min", "must be at least 1".into());
        }
        if self.activity.buffer_size == 0 {
            bad("activity.buffer_size", "must be at least 1".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level) {
            bad("telemetry.log_level", format!("not a valid tracing filter: {e}"));
        }
        if self.broadcast.backend == BroadcastBackend::Redis {
            bad("broadcast.backend", "\"redis\" is not available in this version yet; use \"local\"".into());
        }
        out
    }

    /// Keys whose change needs a restart and that differ between `self` (in
    /// force) and `new`.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.server.listen != new.server.listen {
            out.push("server.listen");
        }
        if self.server.trust_forwarded_for != new.server.trust_forwarded_for {
            out.push("server.trust_forwarded_for");
        }
        if self.persist.without_live_keys() != new.persist.without_live_keys() {
            out.push("persist");
        }
        if self.broadcast != new.broadcast {
            out.push("broadcast");
        }
        if self.metrics != new.metrics {
            out.push("metrics.listen");
        }
        if self.ingest != new.ingest {
            out.push("ingest");
        }
        if self.activity != new.activity {
            out.push("activity");
        }
        if self.telemetry.log_format != new.telemetry.log_format
            || self.telemetry.otlp_endpoint != new.telemetry.otlp_endpoint
        {
            out.push("telemetry.log_format/otlp_endpoint");
        }
        out
    }
}

pub const ENV_PREFIX: &str = "SIDEWIRE__";

/// Applies `SIDEWIRE__SECTION__KEY=value` overrides to the parsed table.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.len() != 2 || parts.iter().any(String::is_empty) {
            issues.push(ConfigIssue {
                key: name.clone(),
                line: None,
                message: "environment overrides are named SIDEWIRE__SECTION__KEY".into(),
            });
            continue;
        }
        // A value that parses as a TOML value is taken as one (numbers, bools,
        // arrays); anything else is a plain string.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let section = table.entry(parts[0].clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        match section {
            toml::Value::Table(t) => {
                t.insert(parts[1].clone(), value);
            }
            _ => issues.push(ConfigIssue { key: parts[0].clone(), line: None, message: "is not a table".into() }),
        }
    }
    issues
}

fn issue_from_toml(text: &str, key: &str, e: &toml::de::Error) -> ConfigIssue {
    let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ConfigIssue { key: key.to_string(), line, message: clean_message(e.message()) }
}

fn clean_message(msg: &str) -> String {
    let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or(msg);
    first.split(" for key `").next().unwrap_or(first).trim().to_string()
}

/// The line where a dotted key (`section.key` or `section.counters[2]`) is
/// written, found by scanning table headers and `key =` lines.
pub fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let dotted = dotted.split('[').next().unwrap_or(dotted);
    let (section, key) = match dotted.split_once('.') {
        Some((s, k)) => (s, Some(k.split('.').next().unwrap_or(k))),
        None => (dotted, None),
    };
    let mut current = String::new();
    let mut section_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == section && section_line.is_none() {
                section_line = Some(i + 1);
            }
            if let Some(k) = key {
                if current == format!("{section}.{k}") {
                    return Some(i + 1);
                }
            }
            continue;
        }
        let Some(k) = key else { continue };
        if current == section {
            if let Some(rest) = line.strip_prefix(k) {
                if rest.trim_start().starts_with('=') {
                    return Some(i + 1);
                }
            }
        }
    }
    section_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("", &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.stats.counter_rules().len(), 3);
        assert_eq!(c.server.listen, "127.0.0.1:8790");
    }

    #[test]
    fn counters_empty_list_means_none() {
        let c = Config::from_toml("[stats]\ncounters = []\n", &[]).unwrap();
        assert!(c.stats.counter_rules().is_empty());
    }

    #[test]
    fn every_unknown_key_and_bad_value_is_reported_with_its_line() {
        let text = "[server]\nlisten = \"nope\"\nlistne = 1\n\n[ws]\nmax_connections = 0\n[bogus]\nx = 1\n";
        let issues = Config::from_toml(text, &[]).unwrap_err();
        let find = |k: &str| issues.iter().find(|i| i.key == k).unwrap_or_else(|| panic!("{k} in {issues:?}"));
        assert_eq!(find("server.listne").line, Some(3));
        assert_eq!(find("bogus").line, Some(7));
        assert_eq!(find("server.listen").line, Some(2));
        assert_eq!(find("ws.max_connections").line, Some(6));
    }

    #[test]
    fn type_error_names_key_and_line() {
        let issues = Config::from_toml("[ws]\nmax_replay = \"lots\"\n", &[]).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "ws.max_replay");
        assert_eq!(issues[0].line, Some(2));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let issues = Config::from_toml("[ws]\nmax_replay = = 3\n", &[]).unwrap_err();
        assert_eq!(issues[0].line, Some(2), "{issues:?}");
    }

    #[test]
    fn metrics_listen_is_checked() {
        let issues = Config::from_toml("[metrics]\nlisten = \"nowhere\"\n", &[]).unwrap_err();
        assert_eq!((issues[0].key.as_str(), issues[0].line), ("metrics.listen", Some(2)));
        let same = "[server]\nlisten = \"127.0.0.1:9000\"\n[metrics]\nlisten = \"127.0.0.1:9000\"\n";
        assert_eq!(Config::from_toml(same, &[]).unwrap_err()[0].key, "metrics.listen");
        let ok = Config::from_toml("[metrics]\nlisten = \"127.0.0.1:9100\"\n", &[]).unwrap();
        assert!(ok.metrics.listen_addr().unwrap().is_some());
    }

    #[test]
    fn env_overrides_single_keys() {
        let env = vec![
            ("SIDEWIRE__WS__MAX_CONNECTIONS".to_string(), "7".to_string()),
            ("SIDEWIRE__SERVER__LISTEN".to_string(), "0.0.0.0:9000".to_string()),
            ("SIDEWIRE__AUTH__INGEST_TOKENS".to_string(), "[\"a\",\"b\"]".to_string()),
        ];
        let c = Config::from_toml("[ws]\nmax_connections = 3\n", &env).unwrap();
        assert_eq!(c.ws.max_connections, 7);
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        assert_eq!(c.auth.ingest_tokens, vec!["a", "b"]);
    }

    #[test]
    fn secrets_never_in_debug() {
        let mut c = Config::default();
        c.auth.ingest_tokens = vec!["s3cret".into()];
        c.persist.webhook_url = "https://user:pw@example.test/hook?key=zz".into();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("pw@") && !dbg.contains("zz"), "{dbg}");
        assert!(dbg.contains("example.test/hook"));
    }

    #[test]
    fn front_door_keys_have_the_contract_defaults_and_are_checked() {
        let c = Config::default();
        assert_eq!(
            (c.server.idle_timeout_secs, c.server.request_timeout_secs, c.server.max_http_connections),
            (10, 30, 0)
        );
        let text = "[server]\nidle_timeout_secs = 0\nrequest_timeout_secs = 0\nmax_http_connections = 5\n";
        let issues = Config::from_toml(text, &[]).unwrap_err();
        let keys: Vec<_> = issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(keys, vec![("server.idle_timeout_secs", Some(2)), ("server.request_timeout_secs", Some(3))]);
    }

    #[test]
    fn counter_rules_are_validated() {
        let text = "[[stats.counters]]\nname = \"eventsTotal\"\non = \"x\"\n[[stats.counters]]\nname = \"ok\"\non = \"Bad Type\"\n";
        let issues = Config::from_toml(text, &[]).unwrap_err();
        assert_eq!(issues.len(), 2, "{issues:?}");
    }
}

/// A loaded config with what is derived from it, computed once per (re)load.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub config: Config,
    /// The counter rules in force.
    pub counters: Vec<CounterRule>,
    /// What ingest validation needs (reserved stat names).
    pub rules: crate::event::Rules,
}

impl LiveConfig {
    pub fn new(config: Config) -> Arc<LiveConfig> {
        let counters = config.stats.counter_rules();
        let mut reserved: std::collections::HashSet<String> =
            crate::stats::BUILTIN_STATS.iter().map(|s| s.to_string()).collect();
        reserved.extend(counters.iter().map(|c| c.name.clone()));
        Arc::new(LiveConfig { config, counters, rules: crate::event::Rules { reserved_stats: reserved } })
    }
}

/// The config in force; a reload sends a new value.
pub type ConfigRx = tokio::sync::watch::Receiver<Arc<LiveConfig>>;
