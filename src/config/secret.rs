//! Values that must never reach a log: bearer tokens ([`Secret`]) and URLs
//! that may carry credentials ([`SecretUrl`]). Both read and compare like the
//! string they wrap, but `Debug` and `Display` hide what is secret, so the
//! config structs holding them can derive `Debug`. The real value is only
//! reachable through `expose()`, which makes every use easy to find.

use serde::Deserialize;
use std::fmt;

/// A secret string (a bearer token): shown as `***`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A URL or DSN that may carry a password or a key in its query: shown
/// through [`redact_url`] (scheme, host and path only).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        SecretUrl(value.into())
    }

    /// The real URL, credentials included. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

macro_rules! string_like {
    ($($t:ident),*) => {$(
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                $t(s.to_string())
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> Self {
                $t(s)
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    )*};
}
string_like!(Secret, SecretUrl);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_secret_and_expose_returns_it() {
        let t = Secret::from("s3cret");
        assert_eq!((format!("{t:?}"), t.to_string(), t.expose()), ("\"***\"".into(), "***".into(), "s3cret"));
        let u = SecretUrl::from("postgres://app:pw@db:5432/sidewire?sslkey=zz");
        assert_eq!(format!("{u:?}"), "\"postgres://***@db:5432/sidewire\"");
        assert_eq!(u.to_string(), "postgres://***@db:5432/sidewire");
        assert_eq!(u.expose(), "postgres://app:pw@db:5432/sidewire?sslkey=zz");
    }

    #[test]
    fn deserializes_as_a_plain_string() {
        #[derive(Deserialize)]
        struct T {
            t: Vec<Secret>,
            u: SecretUrl,
        }
        let v: T = toml::from_str("t = [\"a\"]\nu = \"redis://x\"\n").unwrap();
        assert_eq!((v.t, v.u.expose()), (vec![Secret::from("a")], "redis://x"));
    }
}
