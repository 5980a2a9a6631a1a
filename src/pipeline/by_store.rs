//! A store that numbers groups itself (`AssignsSeqs`: the shared
//! PostgreSQL store of several replicas): the writer hands each group off
//! to a task, forwarded to the cluster's writer (`cluster::relay`) or
//! committed here, and takes a forwarded group back in as one job
//! ([`relay::Submit`]).

use super::{
    observe, publish, refuse, Group, IngestOutcome, Job, Outlet, Pipeline, Sinks, Slot, Writer, OVERLAP_MIN_EVENTS,
    RETRY_AFTER,
};
use crate::cluster::relay;
use crate::error::{ApiError, ErrorCode};
use crate::event::NewEvent;
use crate::persist::{NewBatch, PersistError};
use crate::stats::CounterRule;
use std::time::Instant;
use tracing::Instrument;

impl Writer {
    /// A store that numbers groups itself: the group goes to the cluster's
    /// writer (see [`forward`]), up to [`FORWARDS_IN_FLIGHT`] at once, or is
    /// committed here, one at a time. The store orders them (its head
    /// lock) and the outlet delivers them in seq order, so a forwarded
    /// group need not wait for the one before: the writer merges them.
    /// For a group of [`OVERLAP_MIN_EVENTS`] or more, the commit slot goes
    /// back once the store has numbered it (its head lock is free again),
    /// so the next commit overlaps this one's durable step; the group is
    /// answered only after that step.
    pub(super) fn hand_off(&mut self, jobs: Vec<Job>, slot: Slot) {
        let commit_slot = self.commit_slot.clone();
        let sinks = self.sinks.clone();
        let live = self.config.borrow().clone();
        tokio::spawn(async move {
            let (jobs, commit, held) = match slot {
                Slot::Forward(forward_slot) => {
                    let Some(jobs) = forward(&sinks, jobs).await else { return };
                    // Not forwarded after all: committed here, in turn.
                    (jobs, commit_slot.acquire_owned().await.ok(), forward_slot)
                }
                Slot::Commit { commit, numbered } => (jobs, Some(commit), numbered),
            };
            let commit = parking_lot::Mutex::new(commit);
            let events: usize = jobs.iter().map(|j| j.events.len()).sum();
            let numbered = || {
                if events >= OVERLAP_MIN_EVENTS {
                    drop(commit.lock().take());
                }
            };
            match numbered_by_store(&sinks, &live.counters, &jobs, &numbered).await {
                Ok(group) => publish(&sinks, group, jobs),
                Err(e) => refuse(&sinks, jobs, &e),
            }
            drop(held);
        });
    }
}

/// Several replicas with a commit relay: hands the group to the cluster's
/// writer and answers the jobs with its answer. The jobs back when they are
/// not forwarded (this replica writes, or no writer can be reached): commit
/// them here.
async fn forward(sinks: &Sinks, jobs: Vec<Job>) -> Option<Vec<Job>> {
    let Outlet::Cluster(cluster) = &sinks.outlet else { return Some(jobs) };
    let Some(relay) = cluster.relay() else { return Some(jobs) };
    let events: Vec<&NewEvent> = jobs.iter().flat_map(|j| j.events.iter()).collect();
    let answer = relay.forward(&events).await;
    drop(events);
    let Some(answer) = answer else { return Some(jobs) };
    let total: usize = jobs.iter().map(|j| j.events.len()).sum();
    match answer {
        Ok(fwd) if fwd.seqs.len() == total && fwd.stored.len() == total => {
            let mut at = 0;
            let mut duplicates = 0;
            for job in jobs {
                let n = job.events.len();
                let flags = &fwd.stored[at..at + n];
                for (e, _) in job.events.iter().zip(flags).filter(|(_, stored)| **stored) {
                    sinks.metrics.ingest_events_total.with_label_values(&[sinks.metrics.type_label(&e.kind)]).inc();
                }
                let accepted = flags.iter().filter(|stored| **stored).count();
                duplicates += n - accepted;
                let outcome = IngestOutcome { accepted, duplicates: n - accepted, seqs: fwd.seqs[at..at + n].to_vec() };
                at += n;
                let _enter = job.span.enter();
                tracing::debug!(accepted, duplicates = n - accepted, "events accepted (by the cluster's writer)");
                let _ = job.reply.send(Ok((outcome, Vec::new())));
            }
            sinks.metrics.ingest_duplicates_total.inc_by(duplicates as u64);
        }
        other => {
            let e = other.err().unwrap_or_else(|| {
                ApiError::new(ErrorCode::PersistUnavailable, "the cluster's writer answered another group")
                    .retry_after(RETRY_AFTER)
            });
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
    None
}

/// Hands the whole group in unsequenced; the store dedupes, numbers and
/// folds stats in its commit and answers each event's seq. `numbered` runs
/// when the store has numbered the group, before it is durable.
async fn numbered_by_store(
    sinks: &Sinks,
    counters: &[CounterRule],
    jobs: &[Job],
    numbered: &(dyn Fn() + Sync),
) -> Result<Group, PersistError> {
    let Some(sequencing) = sinks.plugin.as_sequencing() else {
        return Err(PersistError::Corrupt { plugin: sinks.plugin.name(), message: "it does not number events".into() });
    };
    let events = jobs.iter().flat_map(|j| j.events.iter()).collect();
    let batch = NewBatch { events, counters, numbered: Some(numbered) };
    let plugin = sinks.plugin.name();
    let parent = jobs.first().and_then(|j| j.span.id());
    let span = tracing::debug_span!(parent: parent, "persist", plugin, events = batch.events.len());
    for other in jobs.iter().skip(1) {
        span.follows_from(&other.span);
    }
    let started = Instant::now();
    let result = sequencing.persist_new(&batch).instrument(span).await;
    observe(sinks, started, result.as_ref().map(|_| ()), batch.events.len());
    drop(batch);
    let committed = result?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut stored = Vec::with_capacity(jobs.len());
    let mut duplicates = 0;
    let mut at = 0;
    for job in jobs {
        let n = job.events.len();
        let seqs = committed.seqs[at..at + n].to_vec();
        let flags = &committed.stored[at..at + n];
        let accepted = flags.iter().filter(|s| **s).count();
        stored.push(if job.forwarded { flags.to_vec() } else { Vec::new() });
        at += n;
        duplicates += n - accepted;
        outcomes.push(IngestOutcome { accepted, duplicates: n - accepted, seqs });
    }
    Ok(Group { batch: committed.batch, outcomes, stored, spans: Vec::new(), duplicates, permits: Vec::new() })
}

/// The writer's side of the commit relay: a forwarded group is one job.
#[async_trait::async_trait]
impl relay::Submit for Pipeline {
    fn needs_data(&self, kind: &str) -> bool {
        kind == crate::event::STATS_UPDATE
            || self.config.borrow().counters.iter().any(|r| r.on == kind && r.add.is_some())
    }

    async fn submit_forwarded(&self, events: Vec<NewEvent>) -> Result<relay::Forwarded, ApiError> {
        let span = tracing::debug_span!("forwarded", events = events.len());
        let (outcome, stored) = self.submit_job(events, true).instrument(span).await?;
        Ok(relay::Forwarded { seqs: outcome.seqs, stored })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Activity;
    use crate::config::{Config, LiveConfig};
    use crate::event::{Event, Rules};
    use crate::hub::{Delivery, Hub};
    use crate::metrics::Metrics;
    use crate::persist::{AssignsSeqs, Batch, Committed, PersistCallback, PersistError};
    use crate::pipeline::Sinks;
    use crate::stats::{DurableStats, Stats};
    use async_trait::async_trait;
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::{Notify, Semaphore};

    /// Numbers each group at once (calling `numbered` when `early`), then
    /// holds it until the test lets one group through `durable`.
    struct SlowFlush {
        early: bool,
        next: AtomicU64,
        started: AtomicUsize,
        start: Notify,
        durable: Semaphore,
    }

    #[async_trait]
    impl PersistCallback for SlowFlush {
        fn name(&self) -> &'static str {
            "slow-flush"
        }
        async fn persist(&self, _: &Batch) -> Result<(), PersistError> {
            unreachable!("a store that numbers groups gets persist_new")
        }
        fn as_sequencing(&self) -> Option<&dyn AssignsSeqs> {
            Some(self)
        }
    }

    #[async_trait]
    impl AssignsSeqs for SlowFlush {
        async fn persist_new(&self, batch: &NewBatch<'_>) -> Result<Committed, PersistError> {
            let n = batch.events.len() as u64;
            let first = self.next.fetch_add(n, Ordering::SeqCst) + 1;
            let events: Vec<Arc<Event>> =
                batch.events.iter().zip(first..).map(|(e, seq)| Arc::new(Event::from_new(seq, e))).collect();
            if self.early {
                (batch.numbered.expect("the pipeline passes the hook"))();
            }
            self.started.fetch_add(1, Ordering::SeqCst);
            self.start.notify_waiters();
            self.durable.acquire().await.unwrap().forget();
            Ok(Committed {
                seqs: (first..first + n).collect(),
                stored: vec![true; n as usize],
                batch: Batch { events, stats: Arc::new(DurableStats::default()) },
            })
        }
    }

    fn pipeline(store: Arc<SlowFlush>) -> Pipeline {
        let config = Config::default();
        let delivery = Delivery {
            stats: Arc::new(Stats::new(DurableStats::default())),
            activity: Arc::new(Activity::new(store.clone(), 16)),
            hub: Arc::new(Hub::new(64)),
            gauges_changed: Arc::new(tokio::sync::Notify::new()),
        };
        let sinks = Sinks { plugin: store, metrics: Arc::new(Metrics::new()), outlet: Outlet::Local(delivery) };
        let (_tx, rx) = tokio::sync::watch::channel(LiveConfig::new(config));
        Pipeline::start(sinks, rx, DurableStats::default(), 1, &[])
    }

    fn events(request: usize, n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|i| {
                NewEvent::from_value(json!({"type": "a", "id": format!("e-{request}-{i}")}), 0, &Rules::default())
                    .unwrap()
            })
            .collect()
    }

    async fn wait_started(store: &SlowFlush, n: usize) -> bool {
        tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                let notified = store.start.notified();
                if store.started.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }

    /// Runs two requests of `n` events one after the other; whether the
    /// second group's commit started while the first one still waited to
    /// be durable.
    async fn second_commit_overlaps(early: bool, n: usize) -> bool {
        let store = Arc::new(SlowFlush {
            early,
            next: AtomicU64::new(0),
            started: AtomicUsize::new(0),
            start: Notify::new(),
            durable: Semaphore::new(0),
        });
        let p = pipeline(store.clone());
        let first = tokio::spawn({
            let p = p.clone();
            async move { p.submit(events(1, n)).await }
        });
        assert!(wait_started(&store, 1).await, "the first group reaches the store");
        let second = tokio::spawn({
            let p = p.clone();
            async move { p.submit(events(2, n)).await }
        });
        let overlapped = wait_started(&store, 2).await;
        store.durable.add_permits(2);
        let n = n as u64;
        assert_eq!(first.await.unwrap().unwrap().seqs, (1..=n).collect::<Vec<u64>>());
        assert_eq!(second.await.unwrap().unwrap().seqs, (n + 1..=2 * n).collect::<Vec<u64>>());
        overlapped
    }

    #[tokio::test]
    async fn the_next_commit_starts_once_the_store_has_numbered_a_big_group() {
        let n = OVERLAP_MIN_EVENTS;
        assert!(second_commit_overlaps(true, n).await, "the second commit ran during the first one's flush");
    }

    #[tokio::test]
    async fn small_groups_commit_one_at_a_time() {
        let n = OVERLAP_MIN_EVENTS - 1;
        assert!(!second_commit_overlaps(true, n).await, "no second commit before the first one ended");
    }

    #[tokio::test]
    async fn without_the_hook_commits_stay_one_at_a_time() {
        let n = OVERLAP_MIN_EVENTS;
        assert!(!second_commit_overlaps(false, n).await, "no second commit before the first one ended");
    }
}
