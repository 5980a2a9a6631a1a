//! The dashboard WebSocket (contract section 5).
//!
//! The server upgrades the connection itself (not through warp's `Ws`) so it
//! can set tungstenite's buffer sizes: the 128 KiB default read buffer per
//! connection would dominate memory at 10,000 idle dashboards.
//!
//! Each connection is one task. It reads the hub, the client, the newest
//! `stats_update` (a shared `watch` channel) and the heartbeat timer, and
//! queues what goes out in its `Outbox`: a bounded queue
//! (`ws.send_queue_len`; full means the client is a slow consumer, closed
//! with 1008 — the hub and other clients never wait for it) plus one slot
//! for the newest unsent `stats_update` (latest wins). Whenever the outbox
//! holds something, the same task writes all of it and flushes once, so
//! events that arrived together leave in one write; a client whose socket
//! is full only keeps that write pending while the task goes on reading.
//!
//! Resume without gap or duplicate: the connection subscribes to the hub
//! *before* it reads the store. Events are published only after they are
//! stored, so every event with seq > afterSeq is either already in the store
//! when it is read, or published after the subscription. Live events up to
//! the last replayed seq are skipped.
//!
//! # Layout
//!
//! Each file imports only the ones listed below it (checked by
//! `src/layering.rs`); this file holds what they share, [`State`].
//!
//! - `upgrade`: the HTTP side: query, handshake, 101, the spawned task.
//! - `admission`: auth, origin and the per-IP and global limits, in the
//!   contract's order; reserves a connection.
//! - `connection`: the per-connection task.
//! - `guard`: the `ConnectionGuard`, the one
//!   place that counts open connections (here, in stats and in metrics).
//! - `per_ip`: the per-IP table (open connections, recent connects).
//! - `replay`: resume after a seq from the store.
//! - `outbox`: the sending side of a connection.
//! - `end`: why a connection ended (`End`), its close frame and reason.
//! - `socket`: the upgraded socket's type and buffer sizes.
//! - `stats_push`: the `stats_update` pusher shared by all connections.
//! - `protocol`: client messages and the server's message envelope.

mod admission;
mod connection;
mod end;
mod guard;
mod outbox;
mod per_ip;
mod protocol;
mod replay;
mod socket;
mod stats_push;
mod upgrade;

pub use per_ip::ip_key;
pub use protocol::message;
pub use socket::{socket_config, MAX_CLIENT_MESSAGE};
pub use stats_push::stats_pusher;
pub use upgrade::upgrade;

use crate::activity::Activity;
use crate::config::ConfigRx;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::persist::shared::SharedStore;
use crate::persist::PersistCallback;
use crate::stats::Stats;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub const PATHS: [&str; 2] = ["/api/v1/ws/dashboard", "/ws/dashboard"];

/// What the dashboard sockets use: the narrow part of [`crate::app::App`]
/// (built by `App`, which holds it), plus their own bookkeeping.
pub struct State {
    /// The config in force (`[ws]` is read per connection).
    pub config: ConfigRx,
    pub stats: Arc<Stats>,
    /// Replay of recent events without a store read.
    pub activity: Arc<Activity>,
    /// Replay of older events.
    pub plugin: Arc<dyn PersistCallback>,
    /// Several replicas: the shared store, whose durable head tells how far
    /// a resuming client's `afterSeq` is known to the cluster (this
    /// replica's own delivery may lag behind it).
    pub shared: Option<Arc<dyn SharedStore>>,
    pub metrics: Arc<Metrics>,
    /// Live events.
    pub hub: Arc<Hub>,
    pub sockets: WsState,
}

impl State {
    /// The stats object served by REST and WebSocket alike.
    pub fn stats_snapshot(&self) -> Map<String, Value> {
        let live = self.config.borrow().clone();
        self.stats.snapshot(&live.counters)
    }
}

/// Connection bookkeeping shared by all dashboard sockets.
pub struct WsState {
    per_ip: parking_lot::Mutex<per_ip::PerIp>,
    /// Open connections (admitted, not yet dropped); only the
    /// `ConnectionGuard` moves it.
    open: AtomicUsize,
    next_id: AtomicU64,
    /// The newest `stats_update` message; every connection watches it.
    stats_tx: watch::Sender<Utf8Bytes>,
    /// Flips to true at shutdown: every connection closes with 1001.
    shutdown_tx: watch::Sender<bool>,
}

impl WsState {
    pub fn new() -> Self {
        Self {
            per_ip: Default::default(),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stats_tx: watch::channel(Utf8Bytes::from_static("")).0,
            shutdown_tx: watch::channel(false).0,
        }
    }

    /// Sends the newest stats to every connection.
    pub fn push_stats(&self, message: Utf8Bytes) {
        self.stats_tx.send_replace(message);
    }

    /// Asks every connection to close with 1001.
    pub fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Default for WsState {
    fn default() -> Self {
        Self::new()
    }
}
