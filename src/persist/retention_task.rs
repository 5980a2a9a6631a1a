//! The retention task: enforces [`crate::retention`]'s policy on the store
//! and refreshes the store gauges.
//!
//! The task never touches the write path itself: it asks the plugin for one
//! small step at a time ([`Retain::enforce_retention`]), so a store
//! with a single writer (SQLite) interleaves a short delete between two
//! group commits instead of stalling ingest behind one long one. Between
//! steps it yields for [`STEP_PAUSE`]; when nothing is due it sleeps
//! [`CHECK_INTERVAL`]. The policy is re-read from the config channel before
//! every step, so a reload applies at once. A plugin without [`Retain`]
//! (see [`PersistCallback::as_retention`]) has nothing to do here.

use super::{PersistCallback, Retain};
use crate::config::ConfigRx;
use crate::internal_events::RetentionDeleted;
use crate::metrics::Metrics;
use crate::retention::STEP_EVENTS;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

/// Time between two checks when nothing was due.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Pause between two steps of one pass: leaves the writer to ingest.
pub const STEP_PAUSE: Duration = Duration::from_millis(20);
/// How often store size and oldest-event age are refreshed for the metrics.
pub const USAGE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs retention and refreshes the store gauges until dropped (for a
/// plugin without retention, the task ends at once). Failures are logged and
/// retried at the next check; they never reach ingest.
pub fn spawn(plugin: Arc<dyn PersistCallback>, config: ConfigRx, metrics: Arc<Metrics>) -> RetentionTask {
    let task = tokio::spawn(run(plugin, config, metrics));
    RetentionTask { task }
}

/// The running retention task; dropping it stops the task.
#[derive(Debug)]
pub struct RetentionTask {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RetentionTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(plugin: Arc<dyn PersistCallback>, mut config: ConfigRx, metrics: Arc<Metrics>) {
    let name = plugin.name();
    let Some(store) = plugin.as_retention() else { return };
    let mut last_usage = None::<tokio::time::Instant>;
    let mut failing = false;
    loop {
        let policy = config.borrow().config.persist.retention();
        if last_usage.is_none_or(|t| t.elapsed() >= USAGE_INTERVAL) {
            refresh_usage(name, store, &metrics).await;
            last_usage = Some(tokio::time::Instant::now());
        }
        let mut pause = CHECK_INTERVAL;
        if policy.is_active() {
            let started = std::time::Instant::now();
            match store.enforce_retention(&policy, Utc::now(), STEP_EVENTS).await {
                Ok(step) => {
                    if failing {
                        tracing::info!(plugin = name, "retention works again");
                        failing = false;
                    }
                    if step.deleted > 0 {
                        RetentionDeleted {
                            plugin: name,
                            deleted: step.deleted,
                            ms: started.elapsed().as_secs_f64() * 1e3,
                        }
                        .emit(&metrics);
                    }
                    if step.more {
                        pause = STEP_PAUSE;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(plugin = name, error = %e, "retention step failed; retrying later");
                        failing = true;
                    }
                }
            }
        }
        // A reload wakes the task early, so a tightened limit applies at once.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = config.changed() => if changed.is_err() { return },
        }
    }
}

async fn refresh_usage(name: &str, store: &dyn Retain, metrics: &Metrics) {
    let usage = match store.usage().await {
        Ok(Some(u)) => u,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(plugin = name, error = %e, "cannot read the store's size");
            return;
        }
    };
    metrics.persist_store_bytes.with_label_values(&[name]).set(usage.bytes.min(i64::MAX as u64) as i64);
    if let Some(limit) = usage.limit_bytes {
        metrics.persist_store_limit_bytes.with_label_values(&[name]).set(limit.min(i64::MAX as u64) as i64);
    }
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    let age = usage.oldest_stored_at.map_or(0.0, |t| (now - t).max(0.0));
    metrics.persist_oldest_event_age_seconds.with_label_values(&[name]).set(age);
}
