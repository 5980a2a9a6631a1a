//! Configuration: one TOML file (contract sections 7 and 8), typed, validated
//! at load with every error named by key and line, and overridable per key
//! through `SIDEWIRE__SECTION__KEY` environment variables.
//!
//! Loading is pure (text in, [`Config`] or a list of [`ConfigIssue`]s out);
//! building the plugins and listeners from it is done elsewhere.
//!
//! # Layout
//! - `types`: the structs and enums, one per `[section]`, with their defaults.
//! - [`secret`]: [`Secret`] and [`SecretUrl`], which `Debug`/`Display` redacted.
//! - `load`: TOML text and environment overrides in, [`Config`] or issues out.
//! - `validate`: the semantic checks.
//! - `keys`: the one table of keys ([`KEYS`]): which apply live, which need a
//!   restart, how each is compared. Reload and its diff both read it.
//! - `live`: the config in force ([`LiveConfig`], [`ConfigRx`]).

mod keys;
mod live;
mod load;
pub mod secret;
mod types;
mod validate;

pub use keys::{changed_keys, Apply, Key, KEYS};
pub use live::{ConfigRx, LiveConfig};
pub use load::{line_of, ConfigError, ConfigIssue, ConfigSource, DEFAULT_PATH, ENV_PREFIX};
pub use secret::{redact_url, Secret, SecretUrl};
pub use types::*;
