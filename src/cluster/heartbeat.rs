//! Which replicas are alive, and what they add to the stats.
//!
//! Every [`EVERY`] each replica upserts its row in `sidewire_replicas`
//! (its own open dashboards and messages per minute, `seen_at = now()` by
//! the database's clock, so replicas' clocks need not agree) and reads the
//! rows seen within [`EXPIRY`]. A replica that stopped or died drops out
//! within `EXPIRY + EVERY` (12 s), under the contract's 15 s; one that
//! shuts down cleanly deletes its row at once.

use crate::metrics::Metrics;
use crate::persist::shared::{Beat, SharedStore};
use crate::stats::{ClusterView, Stats};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub const EVERY: Duration = Duration::from_secs(2);
pub const EXPIRY: Duration = Duration::from_secs(10);

pub(crate) struct Heartbeat {
    store: Arc<dyn SharedStore>,
    name: String,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    pub(crate) fn start(store: Arc<dyn SharedStore>, name: String, stats: Arc<Stats>, metrics: Arc<Metrics>) -> Self {
        let task = tokio::spawn(run(store.clone(), name.clone(), stats, metrics));
        Heartbeat { store, name, task }
    }

    pub(crate) async fn leave(&self) {
        self.task.abort();
        if let Err(e) = self.store.leave(&self.name).await {
            tracing::debug!(error = %e, "could not remove this replica's heartbeat (it expires by itself)");
        }
    }
}

/// Least time between two "name shared" error lines.
const CLASH_LOG_EVERY: Duration = Duration::from_secs(60);

async fn run(store: Arc<dyn SharedStore>, name: String, stats: Arc<Stats>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    // Tells this process's heartbeats from another's under the same name.
    let instance = format!("{:016x}", rand::random::<u64>());
    let mut written = false;
    let mut clash_logged: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let mine = (stats.active_connections.load(Ordering::Relaxed), stats.messages_window.total());
        let beat = Beat {
            name: &name,
            instance: &instance,
            active_connections: mine.0,
            messages_per_minute: mine.1,
            expiry: EXPIRY,
        };
        match store.heartbeat(beat).await {
            Ok(membership) => {
                let (rows, previous) = (membership.live, membership.previous_instance);
                // Before this process's first write the row may be a
                // previous run's; after it, another writer is a second
                // live replica with the same name.
                let shared = written && previous.is_some_and(|p| p != instance);
                written = true;
                if shared && clash_logged.is_none_or(|t| t.elapsed() >= CLASH_LOG_EVERY) {
                    clash_logged = Some(std::time::Instant::now());
                    tracing::error!(replica = %name,
                        "another live replica also calls itself this: server.replica_name must be unique \
                         (the replica count and the summed stats are off while both run)");
                }
                if failing {
                    tracing::info!("replica heartbeat written again");
                    failing = false;
                }
                let others = rows.iter().filter(|r| r.name != name);
                let view = ClusterView {
                    replicas: (others.clone().count() + 1) as u64,
                    other_connections: others.clone().map(|r| r.active_connections).sum(),
                    other_messages_per_minute: others.map(|r| r.messages_per_minute).sum(),
                };
                metrics.cluster_replicas.set(view.replicas as i64);
                stats.set_cluster(view);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot write this replica's heartbeat; replica count and sums keep \
                        their last values");
                    failing = true;
                }
            }
        }
    }
}
