//! `broadcast.redis_url` with TLS: `rediss://[user:password@]host:port/db`
//! (Redis 6 ACL user and password in the URL, as managed services hand
//! them out), verified against the system roots or the CA in
//! `broadcast.redis_ca_file`; `broadcast.redis_tls_insecure = true` (or the
//! URL fragment `#insecure`) skips verification, with a warning at start.

use super::{explain, provider, read_roots};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the Redis bus connects, and how it checks the server (the URL is
/// secret: `Debug`/`Display` show it without credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    url: String,
    /// PEM of the CA that signed the server certificate; `None`: the
    /// system roots.
    ca_file: Option<PathBuf>,
    /// Accept any server certificate.
    insecure: bool,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &redact(&self.url))
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

/// The URL without credentials, query or fragment (as `config::redact_url`,
/// which this module cannot import: `config` imports this one).
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = rest.rsplit_once('@').map_or(rest.to_string(), |(_, host)| format!("***@{host}"));
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

impl RedisTarget {
    /// `ca_file` empty: none.
    pub fn new(url: &str, ca_file: &Path, insecure: bool) -> RedisTarget {
        RedisTarget {
            url: url.to_string(),
            ca_file: (!ca_file.as_os_str().is_empty()).then(|| ca_file.to_path_buf()),
            insecure,
        }
    }

    /// `rediss://`: TLS.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    /// TLS without verifying the server (the key or the URL's `#insecure`).
    pub fn is_insecure(&self) -> bool {
        self.is_tls() && (self.insecure || self.url.ends_with("#insecure"))
    }

    /// Logs the warning an unverified TLS connection deserves (once, at start).
    pub fn warn_if_insecure(&self) {
        if self.is_insecure() {
            tracing::warn!(redis = %self,
                "broadcast.redis_tls_insecure: the Redis server's certificate is NOT verified (encrypted, but anyone \
                 on the path can pose as the server); set broadcast.redis_ca_file to the CA that signed it instead");
        }
    }

    /// The client for this target (reads the CA file). Errors name the key,
    /// never the URL's password.
    pub fn client(&self) -> Result<redis::Client, String> {
        use redis::IntoConnectionInfo;
        let mut info = self.url.as_str().into_connection_info().map_err(|e| format!("broadcast.redis_url: {e}"))?;
        if !self.is_tls() {
            return redis::Client::open(info).map_err(|e| format!("broadcast.redis_url: {e}"));
        }
        // The Redis client's own rustls code takes the process default.
        let _ = provider();
        if self.insecure {
            if let redis::ConnectionAddr::TcpTls { host, port, tls_params, .. } = info.addr().clone() {
                info = info.set_addr(redis::ConnectionAddr::TcpTls { host, port, insecure: true, tls_params });
            }
        }
        match &self.ca_file {
            Some(path) if !self.is_insecure() => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("broadcast.redis_ca_file: cannot read {}: {e}", path.display()))?;
                redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
                    .map_err(|e| format!("broadcast.redis_ca_file: {}: {e}", path.display()))
            }
            _ => redis::Client::open(info).map_err(|e| format!("broadcast.redis_url: {e}")),
        }
    }

    /// What went wrong with a connection: a TLS failure says what failed
    /// (unknown CA, host name mismatch, refused by the server, …).
    pub fn describe(&self, e: &(dyn std::error::Error + 'static)) -> String {
        let trust = match &self.ca_file {
            Some(p) => format!("broadcast.redis_ca_file ({})", p.display()),
            None => "the system roots (set broadcast.redis_ca_file to the CA that signed it)".to_string(),
        };
        match explain(e, &trust) {
            Some(what) => format!("TLS with {self} failed: {what}"),
            None if !self.is_tls() && e.to_string().to_ascii_lowercase().contains("connection reset") => {
                format!("{e} (does {self} expect TLS? then use rediss://)")
            }
            None => e.to_string(),
        }
    }

    /// A call that got no answer within `deadline`.
    pub fn no_answer(&self, deadline: std::time::Duration) -> String {
        let hint = if self.is_tls() { " (rediss://: is it a TLS port?)" } else { "" };
        format!("no answer from Redis within {} s{hint}", deadline.as_secs())
    }

    /// Offline checks for `check-config`: (key, message).
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = self.client() {
            let key = if e.starts_with("broadcast.redis_ca_file") {
                "broadcast.redis_ca_file"
            } else {
                "broadcast.redis_url"
            };
            out.push((key, e.split_once(": ").map_or(e.clone(), |(_, m)| m.to_string())));
            return out;
        }
        if let Some(path) = &self.ca_file {
            if !self.is_tls() {
                out.push((
                    "broadcast.redis_ca_file",
                    "is set but broadcast.redis_url is not rediss://: the connection would not use TLS".into(),
                ));
            } else if self.insecure {
                out.push((
                    "broadcast.redis_tls_insecure",
                    "cannot be combined with broadcast.redis_ca_file: verify against the CA, or not at all".into(),
                ));
            } else if let Err(e) = read_roots(path, "broadcast.redis_ca_file") {
                out.push(("broadcast.redis_ca_file", e.trim_start_matches("broadcast.redis_ca_file: ").to_string()));
            }
        }
        if self.insecure && !self.is_tls() {
            out.push((
                "broadcast.redis_tls_insecure",
                "is set but broadcast.redis_url is not rediss://: the connection would not use TLS".into(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_shown_without_credentials() {
        let t = RedisTarget::new("rediss://app:s3cret@cache:6380/0#insecure", Path::new(""), false);
        assert_eq!(t.to_string(), "rediss://***@cache:6380/0");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(t.is_insecure());
    }

    #[test]
    fn offline_checks() {
        let keys = |url: &str, ca: &str, insecure: bool| -> Vec<&'static str> {
            RedisTarget::new(url, Path::new(ca), insecure).check().into_iter().map(|(k, _)| k).collect()
        };
        assert!(keys("rediss://u:p@h:6380/0", "", false).is_empty());
        assert!(keys("redis://h/0", "", false).is_empty());
        assert_eq!(keys("rediss://h/0", "/nonexistent/ca.pem", false), ["broadcast.redis_ca_file"]);
        assert_eq!(keys("redis://h/0", "/nonexistent/ca.pem", false), ["broadcast.redis_ca_file"]);
        assert_eq!(keys("redis://h/0", "", true), ["broadcast.redis_tls_insecure"]);
        assert_eq!(keys("http://h", "", false), ["broadcast.redis_url"]);
        let ca = RedisTarget::new("rediss://h/0", Path::new("/nonexistent/ca.pem"), false);
        let (_, message) = &ca.check()[0];
        assert!(message.starts_with("cannot read /nonexistent/ca.pem"), "{message}");
    }
}
