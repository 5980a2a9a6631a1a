//! A store that numbers groups itself (`AssignsSeqs`: the shared
//! PostgreSQL store of several replicas): the writer hands each group off
//! to a task, forwarded to the cluster's writer (`cluster::relay`) or
//! committed here, and takes a forwarded group back in as one job
//! ([`relay::Submit`]).

use super::{observe, publish, refuse, Group, IngestOutcome, Job, Outlet, Pipeline, Sinks, Writer, RETRY_AFTER};
use crate::cluster::relay;
use crate::error::{ApiError, ErrorCode};
use crate::event::NewEvent;
use crate::persist::{NewBatch, PersistError};
use crate::stats::CounterRule;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

impl Writer {
    /// A store that numbers groups itself: the group goes to the cluster's
    /// writer (see [`forward`]), up to [`FORWARDS_IN_FLIGHT`] at once, or is
    /// committed here, one at a time. The store orders them (its head
    /// lock) and the outlet delivers them in seq order, so a forwarded
    /// group need not wait for the one before: the writer merges them.
    pub(super) fn hand_off(&mut self, jobs: Vec<Job>, slot: OwnedSemaphorePermit, forwarding: bool) {
        let commit_slot = self.commit_slot.clone();
        let sinks = self.sinks.clone();
        let live = self.config.borrow().clone();
        tokio::spawn(async move {
            let (jobs, _commit) = if forwarding {
                let Some(jobs) = forward(&sinks, jobs).await else { return };
                // Not forwarded after all: committed here, in turn.
                (jobs, commit_slot.acquire_owned().await.ok())
            } else {
                (jobs, None)
            };
            match numbered_by_store(&sinks, &live.counters, &jobs).await {
                Ok(group) => publish(&sinks, group, jobs),
                Err(e) => refuse(&sinks, jobs, &e),
            }
            drop(slot);
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
/// folds stats in its commit and answers each event's seq.
async fn numbered_by_store(sinks: &Sinks, counters: &[CounterRule], jobs: &[Job]) -> Result<Group, PersistError> {
    let Some(sequencing) = sinks.plugin.as_sequencing() else {
        return Err(PersistError::Corrupt { plugin: sinks.plugin.name(), message: "it does not number events".into() });
    };
    let batch = NewBatch { events: jobs.iter().flat_map(|j| j.events.iter()).collect(), counters };
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
