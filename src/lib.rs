//! # sidewire
//!
//! An observability sidecar. A backend posts its activity events to an HTTP
//! ingest hook; sidewire stores each event through a pluggable persist
//! callback (SQLite by default), keeps stats, and serves them live to
//! dashboards over REST and WebSocket, with Prometheus metrics about itself.
//! The wire contract is fixed in the project's `CONTRACT.md`.
//!
//! # Layout
//!
//! Domain (no web imports; see `docs/ARCHITECTURE.md`, "Layers"):
//!
//! - [`config`]: the TOML config, env overrides, validation with lines.
//! - [`event`]: event validation and the pre-encoded stored form.
//! - [`error`]: the API's errors as pure data (code, message, index).
//! - [`stats`]: durable counters and live windows; one snapshot for all.
//! - [`activity`]: recent events from the store or an in-memory ring.
//! - [`pipeline`]: the single writer: dedupe, seqs, group commit, publish.
//! - [`persist`]: the core [`persist::PersistCallback`] trait, the optional
//!   abilities a plugin opts into (query, dedupe, retention, transfer,
//!   store-assigned seqs), the plugins and the retention task.
//! - [`hub`]: fan-out of accepted events to connections.
//! - [`cluster`]: several replicas: global seq order, the bus, the heartbeat.
//! - [`retention`]: the retention policy (how much history the store keeps).
//! - [`schemas`]: the documented request, response and message shapes.
//! - [`tls`]: TLS to PostgreSQL and Redis (libpq's `sslmode`, `rediss://`).
//!
//! Shared by both layers:
//!
//! - [`metrics`]: Prometheus metrics and their label enums.
//! - [`internal_events`]: occurrences that are logged and counted in one `emit`.
//! - [`log_throttle`]: rate-limited logging of warnings that repeat.
//! - [`version`]: this build's version.
//!
//! Web and edge:
//!
//! - [`app`]: [`app::App`], the running server's shared parts.
//! - [`server`]: building the `App`, the accept loop and graceful shutdown.
//! - [`conn`]: the front door: connection limit, idle and request deadlines,
//!   the open-file limit.
//! - [`http`]: the REST routes (reply, router; ingest, stats, activity,
//!   health, metrics, docs).
//! - [`ws`]: the dashboard WebSocket (admission, connection guard, upgrade,
//!   per-connection task, outbox, replay, protocol, stats pusher).
//! - [`auth`]: bearer-token checks shared by `http` and `ws`.
//! - [`api_docs`]: the OpenAPI 3.1 document, generated from the code.
//! - [`telemetry`]: logging, OpenTelemetry export, request spans.
//! - [`reload`]: config hot reload (folder watcher, SIGHUP).
//!
//! Tools and checks:
//!
//! - [`transfer`]: `sidewire export` / `sidewire import` (NDJSON, streaming).
//! - [`demo`]: synthetic backend traffic (`sidewire demo`).
//! - `layering` (tests only): the layers above, no import cycles between
//!   modules nor between the files of a folder, nothing importing `lib.rs`.
//!
//! # Embedding
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = sidewire::config::Config::default();
//! let listener = sidewire::server::bind("127.0.0.1:0".parse()?)?;
//! sidewire::run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod activity;
pub mod api_docs;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod demo;
pub mod error;
pub mod event;
pub mod http;
pub mod hub;
pub mod internal_events;
pub mod log_throttle;
pub mod metrics;
pub mod persist;
pub mod pipeline;
pub mod reload;
pub mod retention;
pub mod schemas;
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod transfer;
pub mod version;
pub mod ws;

#[cfg(test)]
mod layering;

pub use server::{ServerBuilder, StartError};
pub use version::VERSION;

/// Serves `config` on `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: config::Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    ServerBuilder::new(config).run(listener, shutdown).await
}
