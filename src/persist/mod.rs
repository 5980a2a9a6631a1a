//! The persist callback: the plugin boundary every accepted event crosses
//! before it is acknowledged (with `persist.ack = "durable"`) or broadcast.
//!
//! Built-in plugins: [`sqlite`] (the embedded default), [`jsonl`],
//! [`webhook`] and [`memory`]. A user's own plugin implements
//! [`PersistCallback`] and is handed to [`crate::ServerBuilder::persist`]; see
//! `examples/custom_persist.rs`.
//!
//! [`PersistCallback`] is the core every plugin implements (recover, persist,
//! health, close). What only some stores can do is a trait of its own that a
//! plugin opts into through an `as_*` method of the core trait: [`Query`],
//! [`Dedupe`], [`Retain`], [`Transfer`] and [`AssignsSeqs`]. A caller asks,
//! e.g. `plugin.as_query()`, and gets `None` from a plugin that cannot.

pub mod jsonl;
pub mod memory;
pub mod postgres;
pub mod retention_task;
pub mod ring;
pub mod shared;
pub mod sqlite;
pub mod webhook;

use crate::config::{Config, PluginKind};
use crate::event::{Event, NewEvent};
use crate::retention::{Retention, RetentionStep, StoreUsage};
use crate::stats::CounterRule;
use crate::stats::DurableStats;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// Ids remembered for dedupe by plugins that cannot look ids up in their
/// store: the pipeline's window, and what such a plugin hands back at
/// start-up in [`Recovered::ids`].
pub const DEDUPE_WINDOW: usize = 100_000;

/// One group commit: the events of one or more ingest requests, in seq order,
/// and the stats as they stand once these events are stored.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Strictly increasing seqs; never empty.
    pub events: Vec<Arc<Event>>,
    /// The durable stats after this batch, for plugins that persist them.
    pub stats: Arc<DurableStats>,
}

/// One group commit for a store that assigns seqs itself (see
/// [`AssignsSeqs`]): the events of one or more requests in
/// acceptance order, not yet deduplicated, without seqs.
pub struct NewBatch<'a> {
    pub events: Vec<&'a NewEvent>,
    /// The counter rules in force, to fold the events into the stored stats.
    pub counters: &'a [CounterRule],
    /// Called at most once, as soon as the batch is numbered and the store
    /// would number another batch without waiting for this one (before the
    /// batch is durable): the pipeline then starts its next commit. A
    /// store that numbers and makes durable in one step need not call it.
    pub numbered: Option<&'a (dyn Fn() + Sync)>,
}

impl std::fmt::Debug for NewBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewBatch")
            .field("events", &self.events)
            .field("counters", &self.counters)
            .field("numbered", &self.numbered.is_some())
            .finish()
    }
}

/// What a store that assigns seqs committed for a [`NewBatch`].
#[derive(Debug, Clone)]
pub struct Committed {
    /// Per event of the batch, in its order: the seq it was stored with now,
    /// or, for a duplicate (of the store or of an earlier event of the same
    /// batch), the seq it got the first time.
    pub seqs: Vec<u64>,
    /// Per event of the batch: `true` when stored now, `false` for a duplicate.
    pub stored: Vec<bool>,
    /// The events stored now, in seq order, and the store's stats after them
    /// (which may include events other replicas stored before).
    pub batch: Batch,
}

/// What a plugin found in its store at start-up.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The stats of the stored events; `None` starts from zero.
    pub stats: Option<DurableStats>,
    /// The highest seq ever handed out. Seqs continue above it. A plugin that
    /// keeps nothing across restarts returns a clock-based floor (see
    /// [`clock_seq_floor`]) so seqs still never repeat.
    pub last_seq: u64,
    /// The newest stored events, oldest first, to fill the in-memory activity
    /// ring of a plugin that cannot answer queries.
    pub recent: Vec<Arc<Event>>,
    /// The newest stored ids with their seqs, oldest first (at most
    /// [`DEDUPE_WINDOW`]), to seed the pipeline's dedupe
    /// window so a retry right after a restart is still a duplicate. Plugins
    /// that implement [`Dedupe`] leave it empty.
    pub ids: Vec<(String, u64)>,
}

/// A query on stored events (activity API and WebSocket resume).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Only these types (any of them); empty: every type except gauge reports.
    pub types: Vec<String>,
    /// Only seq < before.
    pub before: Option<u64>,
    /// Only seq > after.
    pub after: Option<u64>,
    /// At most this many.
    pub limit: usize,
    /// `false`: the newest matches, newest first (activity API).
    /// `true`: the oldest matches, oldest first (resume replay).
    pub ascending: bool,
}

impl EventQuery {
    /// Whether one event matches the filters (not the limit).
    pub fn matches(&self, e: &Event) -> bool {
        let type_ok =
            if self.types.is_empty() { !e.is_gauge_report() } else { self.types.iter().any(|t| **t == *e.kind) };
        type_ok && self.before.is_none_or(|b| e.seq < b) && self.after.is_none_or(|a| e.seq > a)
    }
}

/// Why a plugin call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PersistError {
    /// The store is (for now) unreachable or refusing writes; retrying later may work.
    #[error("{plugin} unavailable: {message}")]
    Unavailable { plugin: &'static str, message: String },
    /// The store's content is not what this version understands.
    #[error("{plugin} store is corrupt or of an unknown version: {message}")]
    Corrupt { plugin: &'static str, message: String },
    /// Some ids of the batch are already stored, so nothing of it was
    /// (whole-store dedupe decided by the insert itself, see
    /// [`Dedupe::dedupes_on_insert`]). Maps each such id to the seq
    /// it was stored with.
    #[error("{plugin}: {} ids of the batch are already stored", ids.len())]
    Duplicates { plugin: &'static str, ids: HashMap<String, u64> },
    /// An import would overwrite what the store holds (a seq or an id it
    /// already has); nothing of the refused batch was stored.
    #[error("{plugin}: {message}")]
    Conflict { plugin: &'static str, message: String },
}

impl PersistError {
    pub fn unavailable(plugin: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Unavailable { plugin, message: e.to_string() }
    }
}

/// A persist plugin: the core every plugin implements.
///
/// A plugin that only stores batches (a user's own plugin, `webhook`)
/// implements this trait alone: the activity API and resume are then
/// answered from an in-memory ring, dedupe uses the pipeline's window of
/// recent ids, nothing is pruned and `sidewire export`/`import` refuse it.
/// Everything else a store can do is a trait of its own that a plugin opts
/// into by answering `Some(self)` from the matching `as_*` method:
///
/// | ability | trait | reached through |
/// | --- | --- | --- |
/// | answer activity and resume queries | [`Query`] | [`as_query`](Self::as_query) |
/// | dedupe against every stored id | [`Dedupe`] | [`as_dedupe`](Self::as_dedupe) |
/// | retention and store size | [`Retain`] | [`as_retention`](Self::as_retention) |
/// | export and import | [`Transfer`] | [`as_transfer`](Self::as_transfer) |
/// | assign seqs in its own commit | [`AssignsSeqs`] | [`as_sequencing`](Self::as_sequencing) |
///
/// # What a plugin may assume
/// - [`recover`](Self::recover) is called once, before anything else.
/// - Calls to [`persist`](Self::persist) never overlap: the pipeline has at
///   most one batch in flight, and batches arrive in seq order, each with
///   strictly increasing seqs above every seq of earlier successful batches.
/// - A batch groups the events of many requests (group commit); the events
///   of one request are never split across batches.
/// - A failed batch may be offered again with the same seqs (queued ack
///   retries with backoff); with durable ack it is refused to the clients
///   and its seqs are not reused.
/// - Duplicate ids have been filtered out before `persist` is called, using
///   a window of the last [`DEDUPE_WINDOW`] ids and, for a plugin that
///   implements [`Dedupe`], its [`lookup_ids`](Dedupe::lookup_ids) (except
///   with durable ack for one that [dedupes on
///   insert](Dedupe::dedupes_on_insert): its `persist` refuses them).
/// - [`health`](Self::health) and the optional abilities may be called at
///   any time, also while a batch is being stored.
///
/// # What a plugin must guarantee
/// - `Ok(())` from `persist` means every event of the batch is stored as
///   durably as the plugin promises (the built-in stores survive `kill -9`):
///   the client is told so right after.
/// - A batch is all or nothing where the store allows it (SQLite: one
///   transaction). A plugin that may store part of a failed batch (jsonl,
///   webhook) must tolerate seeing those seqs again.
/// - [`Recovered::last_seq`] is at least every seq it ever stored, so seqs
///   are never handed out twice.
/// - No call panics; errors are returned as [`PersistError`].
#[async_trait]
pub trait PersistCallback: Send + Sync + 'static {
    /// A short name, used as the `plugin` label of metrics and in messages.
    fn name(&self) -> &'static str;

    /// Opens the store and reports what it holds. Called once, first. The
    /// default keeps nothing: seqs continue above the clock (see
    /// [`clock_seq_floor`]).
    async fn recover(&self) -> Result<Recovered, PersistError> {
        Ok(Recovered { last_seq: clock_seq_floor(), ..Default::default() })
    }

    /// Stores one batch.
    async fn persist(&self, batch: &Batch) -> Result<(), PersistError>;

    /// Whether the store can take writes now (drives `/readyz`).
    async fn health(&self) -> Result<(), PersistError> {
        Ok(())
    }

    /// Flushes and closes the store at shutdown.
    async fn close(&self) -> Result<(), PersistError> {
        Ok(())
    }

    /// The plugin answers queries on stored events.
    fn as_query(&self) -> Option<&dyn Query> {
        None
    }

    /// The plugin finds any id it holds (whole-store dedupe).
    fn as_dedupe(&self) -> Option<&dyn Dedupe> {
        None
    }

    /// The plugin applies the retention policy and reports its size.
    fn as_retention(&self) -> Option<&dyn Retain> {
        None
    }

    /// The plugin can be exported and imported into.
    fn as_transfer(&self) -> Option<&dyn Transfer> {
        None
    }

    /// The store assigns seqs in its own commit (a store several replicas
    /// share). The pipeline then hands it whole groups through
    /// [`AssignsSeqs::persist_new`] and never calls [`persist`](Self::persist)
    /// for ingest.
    fn as_sequencing(&self) -> Option<&dyn AssignsSeqs> {
        None
    }
}

/// Queries on stored events: the activity API and WebSocket resume read the
/// store instead of an in-memory ring.
///
/// # What it may assume
/// Queries run concurrently with each other and with `persist`.
///
/// # What it must guarantee
/// - Only stored events are answered (an event whose `persist` has not
///   returned `Ok` may be missing, never one that failed), filtered and
///   ordered as [`EventQuery`] says, at most `limit` of them.
/// - An event is answered from the moment it is stored until retention
///   removes it: the resume replay relies on it to leave no gap.
#[async_trait]
pub trait Query: Send + Sync {
    /// Stored events matching `q`.
    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError>;
}

/// Whole-store dedupe: the store finds any id it holds, so an old retry is
/// still a duplicate (as long as retention kept its event), not only one
/// within the pipeline's window of recent ids.
///
/// # What it may assume
/// [`lookup_ids`](Self::lookup_ids) is called by the writer between two
/// batches, with ids the pipeline's window does not know; ids of a batch
/// still on its way to the store (queued ack) are in that window.
///
/// # What it must guarantee
/// - `lookup_ids` answers every asked id that is stored, with its seq.
/// - With [`dedupes_on_insert`](Self::dedupes_on_insert), `persist` refuses
///   a batch that holds an id already stored: it stores nothing of it and
///   answers [`PersistError::Duplicates`] naming every such id.
#[async_trait]
pub trait Dedupe: Send + Sync {
    /// The seqs of stored events with these ids (missing ids are absent
    /// from the map). Used before seqs are assigned when the answer cannot
    /// wait for the insert (queued ack) or the store does not dedupe on
    /// insert.
    async fn lookup_ids(&self, ids: &[&str]) -> Result<HashMap<String, u64>, PersistError>;

    /// Whether [`PersistCallback::persist`] itself refuses stored ids (a
    /// unique index checked by the insert, see the trait's guarantees). The
    /// pipeline then skips the [`lookup_ids`](Self::lookup_ids) round trip
    /// with durable ack: new ids cost nothing extra, and the rare old
    /// duplicate costs one retry of the group without those events.
    fn dedupes_on_insert(&self) -> bool {
        false
    }
}

/// Retention (see [`crate::retention`]): the background task asks the store
/// for one small step at a time, and reads its size for the gauges.
///
/// # What it may assume
/// One process runs one step at a time (replicas sharing a store may step
/// at once), between or beside the batches of ingest.
///
/// # What it must guarantee
/// - Only ever a prefix in seq order is removed, and
///   [`retention_floor`](Self::retention_floor) never goes down.
/// - A step is short: it removes at most `max_events` events, so ingest
///   waits for at most one step.
/// - The stored stats are never touched.
#[async_trait]
pub trait Retain: Send + Sync {
    /// The highest seq that retention (or a capacity bound) removed: every
    /// event with seq <= this is gone, every later one is kept. Resume uses
    /// it to say `truncated: true`. 0: nothing was ever removed.
    fn retention_floor(&self) -> u64;

    /// One bounded step of retention: removes at most `max_events` of the
    /// oldest events that `policy` no longer keeps at time `now`, and gives
    /// freed space back. The retention task calls it again soon when
    /// [`RetentionStep::more`] is set.
    async fn enforce_retention(
        &self,
        policy: &Retention,
        now: DateTime<Utc>,
        max_events: usize,
    ) -> Result<RetentionStep, PersistError>;

    /// The store's size for the metrics; `None` when it keeps nothing on
    /// disk.
    async fn usage(&self) -> Result<Option<StoreUsage>, PersistError>;
}

/// Export and import (`sidewire export`, `sidewire import`,
/// [`crate::transfer`]): a store's events with their seqs, in and out.
///
/// # What it may assume
/// The import side runs with no sidecar writing to the same store (the
/// command refuses while one listens); its batches arrive in seq order,
/// above every seq the store ever handed out.
///
/// # What it must guarantee
/// - [`read_after`](Self::read_after) holds a bounded number of events at a
///   time, so an export of any size runs in constant memory.
/// - [`import`](Self::import) is all or nothing per batch, and refuses a
///   seq or an id the store already holds with [`PersistError::Conflict`].
#[async_trait]
pub trait Transfer: Send + Sync {
    /// Every stored event with seq > `after`, oldest first, gauge reports
    /// included.
    fn read_after(&self, after: u64) -> Result<EventStream, PersistError>;

    /// Stores events that already carry their seqs, with the stats as they
    /// stand after them. An event whose seq (or id) the store already holds
    /// is refused with [`PersistError::Conflict`], naming it.
    async fn import(&self, batch: &Batch) -> Result<(), PersistError>;
}

/// A store that assigns seqs itself, in its commit: one global order for
/// several replicas sharing it (CONTRACT section 8).
///
/// # What it may assume
/// - Calls never overlap on one replica (one writer); other replicas commit
///   to the same store meanwhile.
/// - A [`NewBatch`] holds the events of one or more requests in acceptance
///   order, not deduplicated, without seqs. The ack is always durable
///   (config validation refuses queued ack: the seqs exist only after the
///   commit).
///
/// # What it must guarantee
/// - One commit, all or nothing: the events get seqs above every seq the
///   store holds, in batch order, without holes; ids the store holds (or an
///   earlier event of the batch has) are not stored again and answer their
///   first seq; the events are folded into the stored stats in the same
///   transaction.
/// - [`Committed`] answers per event of the batch, in its order.
#[async_trait]
pub trait AssignsSeqs: Send + Sync {
    /// Stores a group, assigning its seqs.
    async fn persist_new(&self, batch: &NewBatch<'_>) -> Result<Committed, PersistError>;
}

/// Free bytes on its filesystem that a store whose last write failed waits
/// for before it reports healthy again (room for a few large batches and
/// a checkpoint), so `/readyz` does not flap while batches still fail.
pub const RECOVERY_HEADROOM: u64 = 4 << 20;

/// Stored events in seq order (see [`Transfer::read_after`]).
pub type EventStream = futures::stream::BoxStream<'static, Result<Arc<Event>, PersistError>>;

/// An [`EventStream`] read a page at a time: `page(after)` answers the next
/// stored events with seq > `after`, oldest first (empty at the end). An
/// error is the stream's last item.
pub fn paged<F, Fut>(after: u64, page: F) -> EventStream
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<Arc<Event>>, PersistError>> + Send + 'static,
{
    use futures::StreamExt;
    let page = Arc::new(page);
    futures::stream::unfold(Some(after), move |cursor| {
        let page = page.clone();
        async move {
            let after = cursor?;
            match page(after).await {
                Ok(events) if events.is_empty() => None,
                Ok(events) => {
                    let next = events.last().map(|e| e.seq);
                    Some((Ok(events), next))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
    .flat_map(|page| match page {
        Ok(events) => futures::stream::iter(events.into_iter().map(Ok)).left_stream(),
        Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
    })
    .boxed()
}

/// A seq floor from the wall clock (microseconds since the Unix epoch), for
/// stores that keep no seq across restarts: seqs stay increasing and unique
/// across restarts as long as the clock does not step back and fewer than a
/// million events per second are accepted.
pub fn clock_seq_floor() -> u64 {
    chrono::Utc::now().timestamp_micros().max(0) as u64
}

/// Builds the configured plugin.
pub fn from_config(config: &Config) -> Result<Arc<dyn PersistCallback>, PersistError> {
    let p = &config.persist;
    Ok(match p.plugin {
        PluginKind::Sqlite => Arc::new(sqlite::SqlitePlugin::open(&p.sqlite_path, p.sqlite_synchronous)?),
        PluginKind::Memory => Arc::new(memory::MemoryPlugin::new(p.memory_capacity)),
        PluginKind::Jsonl => Arc::new(jsonl::JsonlPlugin::new(jsonl::JsonlOptions {
            path: p.jsonl_path.clone(),
            max_bytes: p.jsonl_max_bytes,
            max_files: p.jsonl_max_files,
            recent: config.activity.buffer_size,
        })),
        PluginKind::Webhook => Arc::new(webhook::WebhookPlugin::new(webhook_options(config))?),
        PluginKind::Postgres => Arc::new(postgres::PostgresPlugin::new(postgres_options(config, ""))?),
    })
}

/// The `webhook` plugin's options from the config.
pub fn webhook_options(config: &Config) -> webhook::WebhookOptions {
    let p = &config.persist;
    webhook::WebhookOptions {
        url: p.webhook_url.clone(),
        timeout: std::time::Duration::from_millis(p.webhook_timeout_ms),
        max_retries: p.webhook_max_retries,
        backoff: std::time::Duration::from_millis(p.webhook_backoff_ms),
    }
}

/// The `postgres` plugin's options from the config; `replica` names this
/// replica's row of durable heads.
pub fn postgres_options(config: &Config, replica: &str) -> postgres::PostgresOptions {
    let p = &config.persist;
    postgres::PostgresOptions {
        url: p.postgres_url.clone(),
        pool_size: p.postgres_pool_size as usize,
        notify_channel: (config.broadcast.backend == crate::config::BroadcastBackend::Postgres)
            .then(|| notify_channel(&config.broadcast.prefix)),
        replica: replica.to_string(),
    }
}

/// The NOTIFY channel of the `postgres` broadcast backend.
pub fn notify_channel(prefix: &str) -> String {
    format!("{prefix}:events")
}
