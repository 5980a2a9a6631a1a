//! The integration tests, one binary: every file here is a module, so the
//! crate is linked once instead of once per file. Real servers on loopback
//! ports (in-process through `common::TestServer`, or the real binary through
//! `common::Process`), driven over real HTTP and WebSocket.
//!
//! Kept apart, in its own binary: `tests/otlp.rs`, which installs the
//! process-wide tracing subscriber (and OpenTelemetry propagator) and so must
//! be the only test in its process. Nothing here may install global state;
//! a test that needs to should get its own `tests/*.rs` file, with a comment
//! saying why.

mod common;

mod bench_smoke;
mod browser;
mod cluster;
mod cluster_tls;
mod deploy_kit;
mod disk_full;
mod front_door;
mod ingest;
mod log_flood;
mod metrics;
mod monitoring;
mod openapi;
mod persist_failure;
mod plugins;
mod reload;
mod restart;
mod retention;
mod secrets;
mod transfer;
mod ws;
