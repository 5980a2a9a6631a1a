//! Several replicas (CONTRACT section 8): one global order of events across
//! N processes that share a PostgreSQL store, with fan-out over Redis
//! pub/sub or PostgreSQL LISTEN/NOTIFY.
//!
//! ```text
//!   pipeline ── commit (store assigns seqs) ──▶ Sequencer ──▶ Delivery (stats, sockets)
//!                                                  ▲   │
//!               bus (Redis / NOTIFY) ─────────────┘   └─▶ bus publish (own commits)
//!               store reads (gap fill, head check) ──┘
//! ```
//!
//! - The [`Sequencer`](sequencer) is the only path to this replica's
//!   sockets and stats. It keeps the last delivered seq and delivers a batch
//!   only when it continues that seq exactly; a batch further ahead waits
//!   for the missing seqs, which come from the bus or, after a short grace,
//!   from the store (a *gap fill*). Seqs of the shared store have no holes
//!   (the counter row is rolled back with a failed commit), so a jump always
//!   means missed events, never a failed commit.
//! - A periodic check of the store's head catches what no batch reveals
//!   (the last events before a quiet spell, a bus that lost messages): a
//!   head seen above the delivered seq on two checks in a row is filled.
//!   While the bus is down the check runs more often and fills at once, so
//!   every dashboard still gets every event within about a second.
//! - [`heartbeat`] writes this replica's row (connections, messages per
//!   minute) to the store every few seconds and reads the live ones:
//!   `replicas`, and the sums of `activeConnections`/`messagesPerMinute`.

pub mod heartbeat;
pub mod pg_bus;
pub mod redis_bus;
pub mod relay;
pub mod sequencer;
pub mod supervisor;

use crate::config::{BroadcastBackend, Config};
use crate::hub::Delivery;
use crate::metrics::Metrics;
use crate::persist::shared::SharedStore;
use crate::persist::Batch;
use crate::stats::Stats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Which bus carries committed batches between replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusKind {
    /// No bus: this replica's own commits, and the store's head check.
    None,
    /// Pub/sub on this server (URL, CA file, verification).
    Redis { target: crate::tls::redis::RedisTarget },
    /// LISTEN/NOTIFY on this channel (the store notifies in each commit).
    Postgres { channel: String },
}

impl BusKind {
    /// The `backend` label of `sidewire_broadcast_bus_up`.
    pub fn label(&self) -> &'static str {
        match self {
            BusKind::None => "local",
            BusKind::Redis { .. } => "redis",
            BusKind::Postgres { .. } => "postgres",
        }
    }
}

/// How this replica joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Unique among the replicas (`server.replica_name`).
    pub replica_name: String,
    pub bus: BusKind,
    /// Redis channel prefix (`broadcast.prefix`).
    pub prefix: String,
}

impl ClusterOptions {
    /// The cluster settings of `config` (section 8); `port` names the
    /// replica when `server.replica_name` is empty.
    pub fn from_config(config: &Config, port: u16) -> ClusterOptions {
        let b = &config.broadcast;
        let replica_name = match config.server.replica_name.trim() {
            "" => default_replica_name(port),
            name => name.to_string(),
        };
        let bus = match b.backend {
            BroadcastBackend::Local => BusKind::None,
            BroadcastBackend::Redis => BusKind::Redis {
                target: crate::tls::redis::RedisTarget::new(
                    b.redis_url.expose(),
                    &b.redis_ca_file,
                    b.redis_tls_insecure,
                ),
            },
            BroadcastBackend::Postgres => BusKind::Postgres { channel: crate::persist::notify_channel(&b.prefix) },
        };
        ClusterOptions { replica_name, bus, prefix: b.prefix.clone() }
    }
}

/// Inputs of the sequencer task.
#[derive(Debug)]
pub(crate) enum Input {
    /// A batch this replica committed.
    Local(Batch),
    /// A batch another replica committed, from the bus.
    Remote(Batch),
    /// The store notified a commit up to this seq (`postgres` bus).
    Notified(u64),
    /// The bus (re)connected or went away.
    BusUp(bool),
}

/// The running cluster parts of one replica.
pub struct Cluster {
    tx: mpsc::Sender<Input>,
    bus_up: Arc<AtomicBool>,
    bus: BusKind,
    heartbeat: heartbeat::Heartbeat,
    /// The commit relay (Redis bus only).
    relay: Option<Arc<relay::Relay>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("bus", &self.bus).finish_non_exhaustive()
    }
}

/// Batches waiting for the sequencer. A full queue drops the batch: the
/// sequencer reads the missing seqs back from the store.
const INPUT_QUEUE: usize = 4096;

impl Cluster {
    /// Starts the sequencer, the bus and the heartbeat. `last_seq`: the
    /// store's head at start (events up to it are history, served by resume).
    pub fn start(
        options: ClusterOptions,
        store: Arc<dyn SharedStore>,
        delivery: Delivery,
        stats: Arc<Stats>,
        metrics: Arc<Metrics>,
        last_seq: u64,
    ) -> Cluster {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        metrics.broadcast_bus_up.with_label_values(&[options.bus.label()]).set(i64::from(options.bus == BusKind::None));
        let bus_up = Arc::new(AtomicBool::new(false));
        if options.bus != BusKind::None {
            let _ = metrics.broadcast_bus_up.remove_label_values(&["local"]);
        }
        let mut tasks = Vec::new();
        let mut relay = None;
        let publisher = match &options.bus {
            BusKind::None => {
                // Nothing to connect: this replica's own commits are the bus.
                bus_up.store(true, Ordering::SeqCst);
                metrics.broadcast_bus_up.with_label_values(&["local"]).set(1);
                None
            }
            BusKind::Redis { target } => {
                let (ptx, handles) = redis_bus::start(
                    target.clone(),
                    options.prefix.clone(),
                    options.replica_name.clone(),
                    tx.clone(),
                    bus_up.clone(),
                    metrics.clone(),
                );
                tasks.extend(handles);
                relay =
                    Some(relay::Relay::start(target.clone(), &options.prefix, &options.replica_name, metrics.clone()));
                Some(ptx)
            }
            BusKind::Postgres { channel } => {
                tasks.push(pg_bus::start(store.clone(), channel.clone(), tx.clone(), bus_up.clone(), metrics.clone()));
                None
            }
        };
        let seq = sequencer::Sequencer::new(store.clone(), delivery, metrics.clone(), last_seq, publisher);
        tasks.push(tokio::spawn(seq.run(rx, bus_up.clone(), !matches!(options.bus, BusKind::None))));
        let heartbeat = heartbeat::Heartbeat::start(store, options.replica_name.clone(), stats, metrics);
        Cluster { tx, bus_up, bus: options.bus, heartbeat, relay, tasks }
    }

    /// Hands a batch this replica committed to the sequencer (never blocks;
    /// a full queue leaves it to the store check).
    pub fn committed(&self, batch: Batch) {
        if self.tx.try_send(Input::Local(batch)).is_err() {
            tracing::debug!("cluster sequencer queue full; the store check delivers the batch");
        }
    }

    /// The commit relay, with the Redis bus: forward groups to the
    /// cluster's writer (and, once [`relay::Relay::serve`] is called, take
    /// the others' while this replica is the writer).
    pub fn relay(&self) -> Option<&Arc<relay::Relay>> {
        self.relay.as_ref()
    }

    /// `None` without a bus to watch; else whether it is connected (for
    /// `/readyz`: `checks.broadcast`).
    pub fn bus_connected(&self) -> Option<bool> {
        match self.bus {
            BusKind::None => None,
            _ => Some(self.bus_up.load(Ordering::SeqCst)),
        }
    }

    /// The configured bus's label (`local`, `redis`, `postgres`).
    pub fn bus_label(&self) -> &'static str {
        self.bus.label()
    }

    /// Leaves the cluster: the heartbeat row goes (this replica stops
    /// counting at once), the tasks stop.
    pub async fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(r) = &self.relay {
            r.close().await;
        }
        self.heartbeat.leave().await;
    }
}

/// `"<hostname>:<port>"`, the default replica name.
pub fn default_replica_name(port: u16) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_string()
    };
    format!("{host}:{port}")
}
