//! The ingest pipeline: one writer task that turns validated requests into
//! stored, counted and broadcast events.
//!
//! ```text
//!  ingest handlers ──(bounded by persist.queue_len events)──▶ writer task
//!     seqs for the group [group commit], either
//!       numbered here: dedupe (window of recent ids, then the store) →
//!         assign seqs → apply stats to a copy → plugin.persist(batch)
//!       or numbered by the store (AssignsSeqs): plugin.persist_new(group)
//!         dedupes, assigns seqs and folds stats in its commit; in a cluster
//!         with the commit relay, the group goes to the cluster's writer
//!         instead (`cluster::relay`), which commits it merged with others
//!     → on success (one path): stats, activity ring, hub (WebSockets), replies
//! ```
//!
//! Numbering here is serial, so seqs follow acceptance order and the plugin
//! sees batches in seq order. Requests that arrive while a commit is in
//! flight wait in the queue and form the next group (group commit): the
//! writer takes a slot for the next commit (or forward) before it forms the
//! group, so everything that queued meanwhile joins it.
//! With `persist.ack = "queued"` the writer answers right after assigning
//! seqs and hands the batch to a persister task that retries with backoff.

mod by_store;

use crate::cluster::Cluster;
use crate::config::{AckMode, ConfigRx};
use crate::error::{ApiError, ErrorCode};
use crate::event::{Event, NewEvent};
use crate::hub::Delivery;
use crate::internal_events::{DedupeLookupFailed, PersistFailed};
use crate::metrics::Metrics;
use crate::persist::{Batch, PersistCallback, PersistError, DEDUPE_WINDOW};
use crate::stats::DurableStats;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// Most events in one group commit.
const MAX_GROUP_EVENTS: usize = 10_000;
/// Groups forwarded to the cluster's writer and not yet answered, at most.
const FORWARDS_IN_FLIGHT: usize = 1;
/// Groups committed here that the store has numbered but not yet made
/// durable, at most (see [`Slot::Commit`]).
const NUMBERED_IN_FLIGHT: usize = 4;
/// Smallest group whose durable step the next commit overlaps. A smaller
/// group's commit is mostly fixed per-call work, and starting the next one
/// early only splits the queue into more, smaller commits (measured: fewer
/// single events per second on three replicas); a big group's durable
/// step flushes enough WAL to be worth overlapping (batched: more).
const OVERLAP_MIN_EVENTS: usize = 64;
/// `Retry-After` for a 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The answer to an accepted request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    /// In request order; a duplicate reports the seq it got the first time.
    pub seqs: Vec<u64>,
}

struct Job {
    events: Vec<NewEvent>,
    /// Forwarded by another replica (the relay): answered with per-event
    /// stored flags, and counted in `ingest_events_total` by that replica.
    forwarded: bool,
    /// Holds `events.len()` queue slots and the events' bytes until they are
    /// stored.
    permit: OwnedSemaphorePermit,
    bytes_permit: OwnedSemaphorePermit,
    reply: ReplyTo,
    span: tracing::Span,
}

enum Msg {
    Job(Job),
    /// Stop after the jobs before it; answers once everything is stored.
    Close(oneshot::Sender<()>),
}

/// Shared parts the writer publishes to after a commit.
pub struct Sinks {
    pub plugin: Arc<dyn PersistCallback>,
    pub metrics: Arc<Metrics>,
    pub outlet: Outlet,
}

/// Where a stored batch goes.
pub enum Outlet {
    /// One process: delivered right after its commit.
    Local(Delivery),
    /// Several replicas: to the cluster's sequencer, which delivers it in
    /// the global seq order, between other replicas' batches.
    Cluster(Arc<Cluster>),
}

impl Outlet {
    fn committed(&self, batch: &Batch) {
        match self {
            Outlet::Local(d) => d.deliver(batch),
            Outlet::Cluster(c) => c.committed(batch.clone()),
        }
    }
}

/// Handle to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    /// Unbounded only in message count: every job holds at least one permit
    /// of `queue`, so at most `persist.queue_len` events wait.
    tx: mpsc::UnboundedSender<Msg>,
    queue: Arc<Semaphore>,
    queue_len: usize,
    /// Bytes of event data waiting (`persist.queue_max_bytes`).
    queue_bytes: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    config: ConfigRx,
}

impl Pipeline {
    /// Starts the writer (and, for queued ack, the persister) task.
    ///
    /// `seed_ids` (oldest first) pre-fill the dedupe window, so a retry right
    /// after a restart is still recognised by plugins without whole-store
    /// dedupe ([`crate::persist::Dedupe`]).
    pub fn start(
        sinks: Sinks,
        config: ConfigRx,
        initial: DurableStats,
        next_seq: u64,
        seed_ids: &[(String, u64)],
    ) -> Pipeline {
        let live = config.borrow().clone();
        let queue_len = live.config.persist.queue_len;
        let ack = live.config.persist.ack;
        let queue = Arc::new(Semaphore::new(queue_len));
        let queue_bytes = Arc::new(Semaphore::new(live.config.persist.queue_max_bytes));
        let (tx, rx) = mpsc::unbounded_channel();
        let sinks = Arc::new(sinks);
        let metrics = sinks.metrics.clone();
        let persister = (ack == AckMode::Queued).then(|| {
            let (ptx, prx) = mpsc::unbounded_channel();
            tokio::spawn(persister_loop(prx, sinks.clone(), queue.clone(), queue_len));
            ptx
        });
        let writer = Writer {
            sinks,
            config: config.clone(),
            state: initial,
            next_seq,
            window: {
                // Queued ack answers before storing, and a store lookup sees
                // only committed ids: the window must hold every queued one.
                let cap = match ack {
                    AckMode::Durable => DEDUPE_WINDOW,
                    AckMode::Queued => DEDUPE_WINDOW.max(queue_len.saturating_add(MAX_GROUP_EVENTS)),
                };
                let mut w = RecentIds::new(cap);
                for (id, seq) in seed_ids {
                    w.insert(id, *seq);
                }
                w
            },
            persister,
            queue: queue.clone(),
            queue_len,
            commit_slot: Arc::new(Semaphore::new(1)),
            numbered_slots: Arc::new(Semaphore::new(NUMBERED_IN_FLIGHT)),
            forward_slots: Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT)),
        };
        tokio::spawn(writer.run(rx));
        Pipeline { tx, queue, queue_len, queue_bytes, metrics, config }
    }

    /// Submits one request's validated events; all or nothing.
    pub async fn submit(&self, events: Vec<NewEvent>) -> Result<IngestOutcome, ApiError> {
        self.submit_job(events, false).await.map(|(outcome, _)| outcome)
    }

    async fn submit_job(&self, events: Vec<NewEvent>, forwarded: bool) -> Result<(IngestOutcome, Vec<bool>), ApiError> {
        let n = events.len();
        let unavailable =
            |m: &str| ApiError::new(ErrorCode::PersistUnavailable, m.to_string()).retry_after(RETRY_AFTER);
        let permit = match u32::try_from(n).ok().and_then(|n| self.queue.clone().try_acquire_many_owned(n).ok()) {
            Some(p) => p,
            None => {
                return Err(unavailable(&format!(
                    "the persist queue is full ({} events waiting); retry later",
                    self.queue_len - self.queue.available_permits()
                )))
            }
        };
        let bytes: usize = events.iter().map(NewEvent::queued_size).sum();
        let Some(bytes_permit) =
            u32::try_from(bytes).ok().and_then(|b| self.queue_bytes.clone().try_acquire_many_owned(b).ok())
        else {
            return Err(unavailable("the persist queue holds persist.queue_max_bytes of events; retry later"));
        };
        self.metrics.persist_queue_depth.set((self.queue_len - self.queue.available_permits()) as i64);
        let (reply, rx) = oneshot::channel();
        let job = Job { events, forwarded, permit, bytes_permit, reply, span: tracing::Span::current() };
        if self.tx.send(Msg::Job(job)).is_err() {
            return Err(unavailable("the server is shutting down"));
        }
        rx.await.unwrap_or_else(|_| Err(unavailable("the server is shutting down")))
    }

    /// Stores everything queued, then stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Recent ids and their seqs, bounded (oldest forgotten first).
struct RecentIds {
    cap: usize,
    map: HashMap<Box<str>, u64>,
    order: VecDeque<Box<str>>,
}

impl RecentIds {
    fn new(cap: usize) -> Self {
        Self { cap, map: HashMap::new(), order: VecDeque::new() }
    }

    fn get(&self, id: &str) -> Option<u64> {
        self.map.get(id).copied()
    }

    fn insert(&mut self, id: &str, seq: u64) {
        if self.map.insert(id.into(), seq).is_none() {
            self.order.push_back(id.into());
            if self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// Where one request's answer goes: its outcome and, for a forwarded job,
/// per event whether it was stored now.
type ReplyTo = oneshot::Sender<Result<(IngestOutcome, Vec<bool>), ApiError>>;

/// A sequenced group, ready for the plugin.
struct Group {
    batch: Batch,
    /// Per job, in job order: its answer.
    outcomes: Vec<IngestOutcome>,
    /// Per job: which of its events were stored now (forwarded jobs only).
    stored: Vec<Vec<bool>>,
    /// Queued ack: the submitting requests' spans, parents of the `persist`
    /// span (the jobs themselves are answered before storing).
    spans: Vec<tracing::Span>,
    duplicates: usize,
    /// Queued ack: the jobs' queue permits, released once stored.
    permits: Vec<OwnedSemaphorePermit>,
}

struct Writer {
    sinks: Arc<Sinks>,
    config: ConfigRx,
    /// Stats after every batch that is stored or (queued ack) will be.
    state: DurableStats,
    next_seq: u64,
    window: RecentIds,
    /// Queued ack only: batches waiting for the plugin, in seq order.
    persister: Option<mpsc::UnboundedSender<PersisterMsg>>,
    queue: Arc<Semaphore>,
    queue_len: usize,
    /// A store that numbers groups (see `hand_off`): one commit here at a
    /// time (two would only fight over the store's head lock), the groups
    /// numbered and not yet answered, and the slots of groups forwarded to
    /// the cluster's writer.
    commit_slot: Arc<Semaphore>,
    numbered_slots: Arc<Semaphore>,
    forward_slots: Arc<Semaphore>,
}

/// What a group for a store that numbers groups holds while under way.
enum Slot {
    /// A forward slot: the group goes to the cluster's writer.
    Forward(OwnedSemaphorePermit),
    /// Committed here. `commit` (the one commit slot) is given back as soon
    /// as the store has numbered the group and let go of its head lock, so
    /// the next group's commit runs while this one's is made durable;
    /// `numbered` is held until the group is answered.
    Commit { commit: OwnedSemaphorePermit, numbered: OwnedSemaphorePermit },
}

enum PersisterMsg {
    Group(Group),
    Close(oneshot::Sender<()>),
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut closing = None;
        while closing.is_none() {
            let Some(first) = rx.recv().await else { break };
            // With a store that numbers groups, wait for a slot before the
            // group is formed: what queues meanwhile joins it.
            let slot = self.slot().await;
            let mut jobs = Vec::new();
            let mut n = 0;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Job(j) => {
                        n += j.events.len();
                        jobs.push(j);
                    }
                    Msg::Close(done) => {
                        closing = Some(done);
                        break;
                    }
                }
                if n < MAX_GROUP_EVENTS {
                    next = rx.try_recv().ok();
                }
            }
            if !jobs.is_empty() {
                self.process(jobs, slot).await;
            }
        }
        // Groups under way end before the close is answered.
        let _ = self.forward_slots.acquire_many(FORWARDS_IN_FLIGHT as u32).await;
        let _ = self.commit_slot.acquire().await;
        let _ = self.numbered_slots.acquire_many(NUMBERED_IN_FLIGHT as u32).await;
        if let Some(p) = &self.persister {
            let (tx, rx) = oneshot::channel();
            if p.send(PersisterMsg::Close(tx)).is_ok() {
                let _ = rx.await;
            }
        }
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// A slot for the next group when the store numbers groups (see
    /// [`Writer::hand_off`]): a forward slot while groups go to the
    /// cluster's writer, else the commit slot (and a numbered slot).
    async fn slot(&self) -> Option<Slot> {
        self.sinks.plugin.as_sequencing()?;
        let forwarding = match &self.sinks.outlet {
            Outlet::Cluster(c) => c.relay().is_some_and(|r| r.may_forward()),
            Outlet::Local(_) => false,
        };
        if forwarding {
            return self.forward_slots.clone().acquire_owned().await.ok().map(Slot::Forward);
        }
        let numbered = self.numbered_slots.clone().acquire_owned().await.ok()?;
        let commit = self.commit_slot.clone().acquire_owned().await.ok()?;
        Some(Slot::Commit { commit, numbered })
    }

    async fn process(&mut self, jobs: Vec<Job>, slot: Option<Slot>) {
        match self.persister.clone() {
            // A store that assigns seqs is always a durable ack (config
            // validation refuses queued ack with it: the seqs exist only
            // after its commit).
            Some(persister) if self.sinks.plugin.as_sequencing().is_none() => self.enqueue(jobs, persister).await,
            _ if self.sinks.plugin.as_sequencing().is_some() => match slot {
                Some(slot) => self.hand_off(jobs, slot),
                None => refuse(
                    &self.sinks,
                    jobs,
                    &PersistError::Corrupt {
                        plugin: self.sinks.plugin.name(),
                        message: "the writer is closing".into(),
                    },
                ),
            },
            _ => {
                let spans: Vec<tracing::Span> = jobs.iter().map(|j| j.span.clone()).collect();
                match self.numbered_here(&jobs, &spans).await {
                    Ok(group) => publish(&self.sinks, group, jobs),
                    Err(e) => refuse(&self.sinks, jobs, &e),
                }
            }
        }
        self.sinks.metrics.persist_queue_depth.set((self.queue_len - self.queue.available_permits()) as i64);
    }

    /// Dedupes and numbers the group here, then stores it. When the store
    /// refuses ids it already holds ([`PersistError::Duplicates`]: nothing
    /// was stored, so the same seqs are free again), those events answer
    /// their stored seqs and the rest is numbered again from the same first
    /// seq. A failed store leaves its seqs unused.
    async fn numbered_here(&mut self, jobs: &[Job], spans: &[tracing::Span]) -> Result<Group, PersistError> {
        let mut known = self.stored_ids(jobs).await?;
        let base = self.next_seq;
        let mut group = self.sequence(jobs, &known);
        loop {
            match store(&self.sinks, &group.batch, spans).await {
                Ok(()) => break,
                Err(PersistError::Duplicates { ids, .. }) if ids.keys().any(|id| !known.contains_key(id)) => {
                    known.extend(ids);
                    self.next_seq = base;
                    group = self.sequence(jobs, &known);
                }
                Err(e) => return Err(e),
            }
        }
        self.accept(&group, &known);
        Ok(group)
    }

    /// Queued ack: numbers the group here and answers it at once; the
    /// persister stores it (retrying until it is stored), then publishes it.
    async fn enqueue(&mut self, jobs: Vec<Job>, persister: mpsc::UnboundedSender<PersisterMsg>) {
        let known = match self.stored_ids(&jobs).await {
            Ok(found) => found,
            Err(e) => return refuse(&self.sinks, jobs, &e),
        };
        let mut group = self.sequence(&jobs, &known);
        // The events are ours now: answer before storing.
        self.accept(&group, &known);
        count_accepted(&self.sinks, &group.batch.events, group.duplicates);
        for (job, outcome) in jobs.into_iter().zip(&group.outcomes) {
            let _ = job.reply.send(Ok((outcome.clone(), Vec::new())));
            group.permits.push(job.permit);
            group.permits.push(job.bytes_permit);
            group.spans.push(job.span);
        }
        let _ = persister.send(PersisterMsg::Group(group));
    }

    /// The group is (or, with queued ack, will be) stored: its stats and ids
    /// are the writer's from now on. `known`: ids the store turned out to
    /// hold already; remembered too, so a client retrying the same old batch
    /// is answered from the window next time, without the store.
    fn accept(&mut self, group: &Group, known: &HashMap<String, u64>) {
        self.state = (*group.batch.stats).clone();
        for (id, seq) in known {
            self.window.insert(id, *seq);
        }
        for e in &group.batch.events {
            if let Some(id) = &e.id {
                self.window.insert(id, e.seq);
            }
        }
    }

    /// The store's seqs of the group's ids that the window does not know,
    /// when the store must be asked before numbering: not for a plugin
    /// without whole-store dedupe (the window is all there is), nor with
    /// durable ack for a store that dedupes on insert (its insert answers
    /// [`PersistError::Duplicates`] instead, without a round trip for new ids).
    async fn stored_ids(&self, jobs: &[Job]) -> Result<HashMap<String, u64>, PersistError> {
        let Some(dedupe) = self.sinks.plugin.as_dedupe() else { return Ok(HashMap::new()) };
        if self.persister.is_none() && dedupe.dedupes_on_insert() {
            return Ok(HashMap::new());
        }
        let misses: Vec<&str> = {
            let mut seen = std::collections::HashSet::new();
            jobs.iter()
                .flat_map(|j| j.events.iter().filter_map(|e| e.id.as_deref()))
                .filter(|id| self.window.get(id).is_none() && seen.insert(*id))
                .collect()
        };
        dedupe.lookup_ids(&misses).await.inspect_err(|e| {
            DedupeLookupFailed { plugin: self.sinks.plugin.name(), error: e }.emit(&self.sinks.metrics)
        })
    }

    /// Dedupes (this group, the window, then `stored`: ids the store holds)
    /// and assigns seqs from `next_seq`.
    fn sequence(&mut self, jobs: &[Job], stored: &HashMap<String, u64>) -> Group {
        let live = self.config.borrow().clone();
        let mut next = self.state.clone();
        let mut in_group: HashMap<&str, u64> = HashMap::new();
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut duplicates = 0;
        for job in jobs {
            let mut outcome = IngestOutcome { accepted: 0, duplicates: 0, seqs: Vec::with_capacity(job.events.len()) };
            for e in &job.events {
                if let Some(id) = e.id.as_deref() {
                    let first =
                        in_group.get(id).copied().or_else(|| self.window.get(id)).or_else(|| stored.get(id).copied());
                    if let Some(seq) = first {
                        outcome.duplicates += 1;
                        outcome.seqs.push(seq);
                        continue;
                    }
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Some(id) = e.id.as_deref() {
                    in_group.insert(id, seq);
                }
                next.apply(seq, e, &live.counters);
                events.push(Arc::new(Event::from_new(seq, e)));
                outcome.accepted += 1;
                outcome.seqs.push(seq);
            }
            duplicates += outcome.duplicates;
            outcomes.push(outcome);
        }
        Group {
            batch: Batch { events, stats: Arc::new(next) },
            outcomes,
            stored: Vec::new(),
            spans: Vec::new(),
            duplicates,
            permits: Vec::new(),
        }
    }
}

/// Answers every job with 503: nothing of them was accepted.
fn refuse(sinks: &Sinks, jobs: Vec<Job>, e: &PersistError) {
    tracing::debug!(error = %e, requests = jobs.len(), "group refused");
    let plugin = sinks.plugin.name();
    for job in jobs {
        let _ = job.reply.send(Err(ApiError::new(
            ErrorCode::PersistUnavailable,
            format!("the {plugin} store failed; nothing was accepted, retry later"),
        )
        .retry_after(RETRY_AFTER)));
    }
}

/// One attempt to store a batch, timed and counted.
///
/// The `persist` span is a child of the first request's span (so it joins
/// that request's trace) and follows from the others in the group.
async fn store(sinks: &Sinks, batch: &Batch, requests: &[tracing::Span]) -> Result<(), PersistError> {
    if batch.events.is_empty() {
        return Ok(()); // only duplicates: nothing to store
    }
    let plugin = sinks.plugin.name();
    let parent = requests.first().and_then(|s| s.id());
    let span = tracing::debug_span!(parent: parent, "persist", plugin, events = batch.events.len(),
        first_seq = batch.events[0].seq, last_seq = batch.events[batch.events.len() - 1].seq);
    for other in requests.iter().skip(1) {
        span.follows_from(other);
    }
    let started = Instant::now();
    let result: Result<(), PersistError> = sinks.plugin.persist(batch).instrument(span).await;
    observe(sinks, started, result.as_ref().map(|_| ()), batch.events.len());
    result
}

/// Times and counts one store attempt (and logs a failure, rate-limited).
fn observe(sinks: &Sinks, started: Instant, result: Result<(), &PersistError>, events: usize) {
    let plugin = sinks.plugin.name();
    sinks.metrics.persist_duration_seconds.with_label_values(&[plugin]).observe(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => sinks.metrics.persist_success_total.with_label_values(&[plugin]).inc(),
        // Not a failure of the store: the pipeline sequences the group again.
        Err(PersistError::Duplicates { ids, .. }) => tracing::debug!(plugin, ids = ids.len(), "stored ids refused"),
        Err(e) => PersistFailed { plugin, error: e, events }.emit(&sinks.metrics),
    }
}

fn count_accepted(sinks: &Sinks, events: &[Arc<Event>], duplicates: usize) {
    for e in events {
        sinks.metrics.ingest_events_total.with_label_values(&[sinks.metrics.type_label(&e.kind)]).inc();
    }
    sinks.metrics.ingest_duplicates_total.inc_by(duplicates as u64);
}

/// After a successful store: stats, activity, hub, then the replies (durable
/// ack: `jobs` are the group's requests; queued ack answered them already).
fn publish(sinks: &Sinks, group: Group, jobs: Vec<Job>) {
    let events = &group.batch.events;
    sinks.outlet.committed(&group.batch);
    if jobs.iter().any(|j| j.forwarded) {
        // Forwarded events are counted by the replicas that accepted them.
        // The group's events are in job order, `accepted` of each job.
        let mut at = 0;
        for (job, outcome) in jobs.iter().zip(&group.outcomes) {
            if !job.forwarded {
                count_accepted(sinks, &events[at..at + outcome.accepted], outcome.duplicates);
            }
            at += outcome.accepted;
        }
    } else if !jobs.is_empty() {
        count_accepted(sinks, events, group.duplicates);
    }
    let mut stored = group.stored.into_iter();
    for (job, outcome) in jobs.into_iter().zip(group.outcomes) {
        let _enter = job.span.enter();
        tracing::debug!(accepted = outcome.accepted, duplicates = outcome.duplicates, "events accepted");
        let _ = job.reply.send(Ok((outcome, stored.next().unwrap_or_default())));
    }
    drop(group.permits);
}

/// Queued ack: stores groups in order, retrying each with backoff until it is
/// stored. At close, gives up after the shutdown grace period.
async fn persister_loop(
    mut rx: mpsc::UnboundedReceiver<PersisterMsg>,
    sinks: Arc<Sinks>,
    queue: Arc<Semaphore>,
    queue_len: usize,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            PersisterMsg::Group(mut group) => {
                let mut delay = Duration::from_millis(100);
                let stored = loop {
                    match store(&sinks, &group.batch, &group.spans).await {
                        Ok(()) => break true,
                        Err(PersistError::Duplicates { ids, .. }) => {
                            // Already answered, and those ids are stored: keep
                            // the rest. The lookup before sequencing and the
                            // window make this unreachable from ingest alone
                            // (another writer on the same store, e.g. an
                            // `import --force`, could); the stored stats then
                            // still count the dropped events.
                            tracing::error!(
                                ids = ids.len(),
                                "queued events were already stored by someone else; storing the rest \
                                 (stats count the others too)"
                            );
                            group.batch.events.retain(|e| e.id.as_deref().is_none_or(|id| !ids.contains_key(id)));
                        }
                        // Retrying cannot help: the store refuses these events as they are.
                        Err(e @ PersistError::Corrupt { .. }) => {
                            tracing::error!(error = %e, events = group.batch.events.len(), "queued events cannot be stored; dropped");
                            break false;
                        }
                        Err(_) => {
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                };
                if stored {
                    publish(&sinks, group, Vec::new());
                }
                sinks.metrics.persist_queue_depth.set((queue_len - queue.available_permits()) as i64);
            }
            PersisterMsg::Close(done) => {
                let _ = done.send(());
                return;
            }
        }
    }
}
