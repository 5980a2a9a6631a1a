//! Semantic checks of a parsed [`Config`], all at once, each named by its
//! dotted key (the loader adds the line).

use super::{AckMode, BroadcastBackend, Config, PluginKind};

impl Config {
    /// Semantic checks, all at once: (dotted key, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut bad = |k: &str, m: String| out.push((k.to_string(), m));
        if let Err(e) = self.listen_addr() {
            bad("server.listen", e);
        }
        match (self.metrics.listen_addr(), self.listen_addr()) {
            (Err(e), _) => bad("metrics.listen", e),
            // Port 0 on both is fine: each gets a port of its own.
            (Ok(Some(m)), Ok(l)) if m == l && m.port() != 0 => {
                bad("metrics.listen", "must differ from server.listen".into())
            }
            _ => {}
        }
        for (k, v) in [
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            ("server.request_timeout_secs", self.server.request_timeout_secs),
            ("server.write_timeout_secs", self.server.write_timeout_secs),
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
            if list.iter().map(|t| t.expose()).any(|t| t.is_empty() || t.chars().any(|c| !c.is_ascii_graphic())) {
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
            PluginKind::Webhook
                if !(p.webhook_url.expose().starts_with("http://")
                    || p.webhook_url.expose().starts_with("https://")) =>
            {
                bad("persist.webhook_url", "plugin \"webhook\" needs an http:// or https:// URL".into())
            }
            PluginKind::Postgres => {
                if p.postgres_url.is_empty() {
                    bad("persist.postgres_url", "required by plugin \"postgres\"".into());
                } else if let Err(e) = crate::tls::postgres::check(p.postgres_url.expose()) {
                    // libpq's URL conventions, TLS files included (read here).
                    bad("persist.postgres_url", e);
                }
                if p.ack == AckMode::Queued {
                    bad(
                        "persist.ack",
                        "\"queued\" cannot be used with plugin \"postgres\": the shared store assigns seqs in its \
                         commit, so they are not known before it; use \"durable\""
                            .into(),
                    );
                }
            }
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
        if !(1..=1000).contains(&p.postgres_pool_size) {
            bad("persist.postgres_pool_size", "must be between 1 and 1000".into());
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
        let b = &self.broadcast;
        let backend = match b.backend {
            BroadcastBackend::Local => None,
            BroadcastBackend::Redis => Some("redis"),
            BroadcastBackend::Postgres => Some("postgres"),
        };
        if let Some(name) = backend {
            if p.plugin != PluginKind::Postgres {
                bad(
                    "broadcast.backend",
                    format!("\"{name}\" needs persist.plugin = \"postgres\" (replicas must share one store)"),
                );
            }
        }
        if b.backend == BroadcastBackend::Redis {
            if b.redis_url.is_empty() {
                bad("broadcast.redis_url", "required by backend \"redis\"".into());
            } else {
                let target =
                    crate::tls::redis::RedisTarget::new(b.redis_url.expose(), &b.redis_ca_file, b.redis_tls_insecure);
                for (key, message) in target.check() {
                    bad(key, message);
                }
            }
        }
        if b.prefix.is_empty() {
            bad("broadcast.prefix", "must not be empty".into());
        } else if b.prefix.chars().any(char::is_whitespace) {
            bad("broadcast.prefix", "must not contain whitespace".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listen_is_checked() {
        let issues = Config::from_toml("[metrics]\nlisten = \"nowhere\"\n", &[]).unwrap_err();
        assert_eq!((issues[0].key.as_str(), issues[0].line), ("metrics.listen", Some(2)));
        let same = "[server]\nlisten = \"127.0.0.1:9000\"\n[metrics]\nlisten = \"127.0.0.1:9000\"\n";
        assert_eq!(Config::from_toml(same, &[]).unwrap_err()[0].key, "metrics.listen");
        let both_any_port = "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
        assert!(Config::from_toml(both_any_port, &[]).is_ok(), "port 0 twice: two ports");
        let ok = Config::from_toml("[metrics]\nlisten = \"127.0.0.1:9100\"\n", &[]).unwrap();
        assert!(ok.metrics.listen_addr().unwrap().is_some());
    }

    #[test]
    fn front_door_keys_have_the_contract_defaults_and_are_checked() {
        let c = Config::default();
        assert_eq!(
            (
                c.server.idle_timeout_secs,
                c.server.request_timeout_secs,
                c.server.write_timeout_secs,
                c.server.max_http_connections
            ),
            (10, 30, 30, 0)
        );
        let text = "[server]\nidle_timeout_secs = 0\nrequest_timeout_secs = 0\nmax_http_connections = 5\n\
                    write_timeout_secs = 0\n";
        let issues = Config::from_toml(text, &[]).unwrap_err();
        let keys: Vec<_> = issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("server.idle_timeout_secs", Some(2)),
                ("server.request_timeout_secs", Some(3)),
                ("server.write_timeout_secs", Some(5))
            ]
        );
    }

    #[test]
    fn counter_rules_are_validated() {
        let text = "[[stats.counters]]\nname = \"eventsTotal\"\non = \"x\"\n[[stats.counters]]\nname = \"ok\"\non = \"Bad Type\"\n";
        let issues = Config::from_toml(text, &[]).unwrap_err();
        assert_eq!(issues.len(), 2, "{issues:?}");
    }

    #[test]
    fn cluster_keys_are_checked() {
        let keys = |text: &str| -> Vec<(String, String)> {
            Config::from_toml(text, &[]).unwrap_err().into_iter().map(|i| (i.key, i.message)).collect()
        };
        for n in [0, 1001] {
            let issues = keys(&format!("[persist]\npostgres_pool_size = {n}\n"));
            assert_eq!(issues, vec![("persist.postgres_pool_size".into(), "must be between 1 and 1000".into())]);
        }
        assert!(Config::from_toml("[persist]\npostgres_pool_size = 1000\n", &[]).is_ok());
        for (prefix, message) in [("", "must not be empty"), ("a b", "must not contain whitespace")] {
            let issues = keys(&format!("[broadcast]\nprefix = {prefix:?}\n"));
            assert_eq!(issues, vec![("broadcast.prefix".into(), message.into())]);
        }
        assert!(Config::from_toml("[server]\nreplica_name = \"a:1\"\n[broadcast]\nprefix = \"sw-2\"\n", &[]).is_ok());
        for backend in ["redis", "postgres"] {
            let issues = keys(&format!("[broadcast]\nbackend = \"{backend}\"\nredis_url = \"redis://r/0\"\n"));
            assert!(issues.iter().all(|(k, _)| k == "broadcast.backend"), "{issues:?}");
            assert!(issues.iter().any(|(_, m)| m.contains("needs persist.plugin = \"postgres\"")), "{issues:?}");
            // With the shared store nothing is left to object to.
            let text = format!(
                "[persist]\nplugin = \"postgres\"\npostgres_url = \"postgres://u@db/s\"\n\
                 [broadcast]\nbackend = \"{backend}\"\nredis_url = \"redis://127.0.0.1/0\"\n"
            );
            assert!(Config::from_toml(&text, &[]).is_ok(), "{backend}: {:?}", Config::from_toml(&text, &[]).err());
            // Queued ack answers seqs before the store assigns them.
            let queued = text.replacen("[persist]\n", "[persist]\nack = \"queued\"\n", 1);
            assert_eq!(keys(&queued).iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["persist.ack"]);
        }
        let issues = keys("[persist]\nplugin = \"postgres\"\n[broadcast]\nbackend = \"redis\"\n");
        let names: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["persist.postgres_url", "broadcast.redis_url"], "{issues:?}");
        for (key, text) in [
            ("persist.postgres_url", "[persist]\nplugin = \"postgres\"\npostgres_url = \"mysql://x\"\n"),
            ("broadcast.redis_url", "[persist]\nplugin = \"postgres\"\npostgres_url = \"postgres://u@h/d\"\n[broadcast]\nbackend = \"redis\"\nredis_url = \"http://x\"\n"),
        ] {
            assert_eq!(keys(text).iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), [key], "{text}");
        }
    }
}
