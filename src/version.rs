//! This build's version, in a module of its own so that the modules that
//! report it (`connection_ack`, `sidewire_build_info`, the start-up line,
//! the webhook's `User-Agent`, the OpenTelemetry resource) do not import the
//! crate root.

/// This build's version, as reported in `connection_ack` and `sidewire_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
