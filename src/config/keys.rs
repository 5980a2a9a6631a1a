//! The one table of config keys: for each its dotted name, whether a reload
//! applies it live or only a restart does, and how two configs are compared
//! on it. Reload (what changed, what is kept until a restart) reads only this
//! table, and the table cannot miss a field: [`every_field_is_in_the_table`]
//! stops compiling when a config struct gains one that is not listed.

use super::*;

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// A reload puts it in force.
    Live,
    /// A reload keeps the value in force (and warns); a restart applies it.
    Restart,
}

/// One config key.
#[derive(Debug)]
pub struct Key {
    /// `section.key`, as written in the file.
    pub name: &'static str,
    pub apply: Apply,
    /// Whether two configs differ on this key.
    differs: fn(&Config, &Config) -> bool,
    /// Copies this key's value from the second config into the first.
    keep: fn(&mut Config, &Config),
}

impl Key {
    pub fn differs(&self, a: &Config, b: &Config) -> bool {
        (self.differs)(a, b)
    }
}

/// Builds [`KEYS`] and the exhaustiveness check from one list.
macro_rules! keys {
    ($($section:ident: $ty:ident { $($field:ident: $apply:ident),* $(,)? })*) => {
        /// Every key, in file order.
        pub static KEYS: &[Key] = &[$($(Key {
            name: concat!(stringify!($section), ".", stringify!($field)),
            apply: Apply::$apply,
            differs: |a, b| a.$section.$field != b.$section.$field,
            keep: |new, old| new.$section.$field.clone_from(&old.$section.$field),
        },)*)*];

        /// Never called: the pattern names every field (no `..`), so adding a
        /// field or section without a row above is a compile error.
        #[allow(dead_code)]
        fn every_field_is_in_the_table(c: &Config) {
            let Config { $($section: $ty { $($field: _),* }),* } = c;
        }
    };
}

keys! {
    server: ServerConfig {
        listen: Restart,
        allowed_origins: Live,
        trust_forwarded_for: Restart,
        shutdown_timeout_secs: Live,
        idle_timeout_secs: Live,
        request_timeout_secs: Live,
        write_timeout_secs: Live,
        max_http_connections: Live,
        replica_name: Restart,
    }
    auth: AuthConfig { ingest_tokens: Live, dashboard_tokens: Live }
    ingest: IngestConfig { max_batch: Restart, max_body_bytes: Restart }
    persist: PersistConfig {
        plugin: Restart,
        ack: Restart,
        queue_len: Restart,
        queue_max_bytes: Restart,
        sqlite_path: Restart,
        sqlite_synchronous: Restart,
        jsonl_path: Restart,
        jsonl_max_bytes: Restart,
        jsonl_max_files: Restart,
        webhook_url: Restart,
        webhook_timeout_ms: Restart,
        webhook_max_retries: Restart,
        webhook_backoff_ms: Restart,
        memory_capacity: Restart,
        postgres_url: Restart,
        postgres_pool_size: Restart,
        retention_max_age: Live,
        retention_max_events: Live,
        retention_max_bytes: Live,
    }
    stats: StatsConfig { interval_secs: Live, min_push_interval_ms: Live, counters: Live }
    ws: WsConfig {
        max_connections: Live,
        max_connections_per_ip: Live,
        connect_rate_per_ip_per_min: Live,
        send_queue_len: Live,
        max_replay: Live,
        ping_interval_secs: Live,
        pong_timeout_secs: Live,
    }
    activity: ActivityConfig { buffer_size: Restart }
    telemetry: TelemetryConfig { log_level: Live, log_format: Restart, otlp_endpoint: Restart }
    broadcast: BroadcastConfig {
        backend: Restart,
        redis_url: Restart,
        redis_ca_file: Restart,
        redis_tls_insecure: Restart,
        prefix: Restart,
    }
    metrics: MetricsConfig { listen: Restart }
}

/// The dotted keys whose values differ between two configs, in file order.
/// Only names, never values (tokens and DSNs are secrets).
pub fn changed_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    KEYS.iter().filter(|k| k.differs(a, b)).map(|k| k.name).collect()
}

impl Config {
    /// Keys whose change needs a restart and that differ between `self` (in
    /// force) and `new`.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        KEYS.iter().filter(|k| k.apply == Apply::Restart && k.differs(self, new)).map(|k| k.name).collect()
    }

    /// `self` (a newly loaded config) with every restart-only key set back to
    /// its value in `old` (the one in force): what a reload puts in force.
    pub fn keeping_restart_only(mut self, old: &Config) -> Config {
        for key in KEYS.iter().filter(|k| k.apply == Apply::Restart) {
            (key.keep)(&mut self, old);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_restart_only_key_changed() -> (Config, Config) {
        let old = Config::default();
        let mut new = Config::default();
        new.server.listen = "127.0.0.1:9999".into();
        new.server.trust_forwarded_for = true;
        new.server.replica_name = "b".into();
        new.persist.plugin = PluginKind::Memory;
        new.persist.sqlite_path = "elsewhere.db".into();
        new.persist.postgres_pool_size = 4;
        new.broadcast.redis_url = "redis://x".into();
        new.broadcast.prefix = "other".into();
        new.ingest.max_batch = 7;
        new.activity.buffer_size = 3;
        new.telemetry.log_format = LogFormat::Json;
        new.telemetry.otlp_endpoint = "http://c:4318".into();
        new.metrics.listen = "127.0.0.1:9100".into();
        // and live ones
        new.stats.interval_secs = 2;
        new.persist.retention_max_events = 5;
        new.auth.ingest_tokens = vec!["t".into()];
        (old, new)
    }

    #[test]
    fn restart_only_keys_keep_their_old_value_and_the_rest_applies() {
        let (old, new) = every_restart_only_key_changed();
        assert_eq!(
            old.restart_only_changes(&new),
            vec![
                "server.listen",
                "server.trust_forwarded_for",
                "server.replica_name",
                "ingest.max_batch",
                "persist.plugin",
                "persist.sqlite_path",
                "persist.postgres_pool_size",
                "activity.buffer_size",
                "telemetry.log_format",
                "telemetry.otlp_endpoint",
                "broadcast.redis_url",
                "broadcast.prefix",
                "metrics.listen",
            ]
        );
        let applied = new.keeping_restart_only(&old);
        assert!(old.restart_only_changes(&applied).is_empty(), "{:?}", old.restart_only_changes(&applied));
        assert_eq!(applied.stats.interval_secs, 2);
        assert_eq!(applied.auth.ingest_tokens, vec!["t"]);
        assert_eq!(applied.persist.retention_max_events, 5, "retention is live");
        assert_eq!(
            changed_keys(&old, &applied),
            vec!["auth.ingest_tokens", "persist.retention_max_events", "stats.interval_secs"]
        );
    }

    #[test]
    fn every_key_has_a_unique_name_that_the_loader_knows() {
        let mut seen = std::collections::HashSet::new();
        for key in KEYS {
            assert!(seen.insert(key.name), "{} twice", key.name);
            let (section, field) = key.name.split_once('.').unwrap();
            let text = format!("[{section}]\n{field} = []\n");
            let issues = Config::from_toml(&text, &[]).err().unwrap_or_default();
            assert!(!issues.iter().any(|i| i.message == "unknown key"), "{}: {issues:?}", key.name);
        }
    }

    /// The example config marks restart-only keys `[restart]`; it must agree
    /// with the table (and show every key).
    #[test]
    fn the_example_config_marks_exactly_the_restart_only_keys() {
        let text = include_str!("../../config/sidewire.toml");
        let mut section = String::new();
        let mut marked = std::collections::HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            } else if let Some((key, rest)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                marked.insert(format!("{section}.{}", key.trim()), rest.contains("[restart]"));
            }
        }
        for key in KEYS.iter().filter(|k| k.name != "stats.counters") {
            let restart =
                marked.get(key.name).unwrap_or_else(|| panic!("{} missing in config/sidewire.toml", key.name));
            assert_eq!(*restart, key.apply == Apply::Restart, "{} in config/sidewire.toml", key.name);
        }
    }
}
