//! The persist callback: the plugin boundary every accepted event crosses
//! before it is acknowledged (with `persist.ack = "durable"`) or broadcast.
//!
//! Built-in plugins: [`sqlite`] (the embedded default), [`jsonl`],
//! [`webhook`] and [`memory`]. A user's own plugin implements
//! [`PersistCallback`] and is handed to [`crate::ServerBuilder::persist`]; see
//! `examples/custom_persist.rs`.

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
/// [`PersistCallback::assigns_seqs`]): the events of one or more requests in
/// acceptance order, not yet deduplicated, without seqs.
#[derive(Debug)]
pub struct NewBatch<'a> {
    pub events: Vec<&'a NewEvent>,
    /// The counter rules in force, to fold the events into the stored stats.
    pub counters: &'a [CounterRule],
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
    /// that answer [`PersistCallback::lookup_ids`] leave it empty.
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
    /// The plugin cannot answer this kind of call.
    #[error("{plugin} does not support {what}")]
    Unsupported { plugin: &'static str, what: &'static str },
    /// Some ids of the batch are already stored, so nothing of it was
    /// (whole-store dedupe decided by the insert itself, see
    /// [`PersistCallback::dedupes_on_insert`]). Maps each such id to the seq
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

/// A persist plugin.
///
/// # What a plugin may assume
/// - Calls to [`persist`](Self::persist) never overlap: the pipeline has at
///   most one batch in flight, and batches arrive in seq order, each with
///   strictly increasing seqs above every seq of earlier successful batches.
/// - A batch groups the events of many requests (group commit); the events
///   of one request are never split across batches.
/// - A failed batch may be offered again with the same seqs (queued ack
///   retries with backoff); with durable ack it is refused to the clients
///   and its seqs are not reused.
/// - Duplicate ids have been filtered out before `persist` is called, using a
///   window of recent ids and, unless the plugin
///   [`dedupes_on_insert`](Self::dedupes_on_insert) and the ack is durable,
///   [`lookup_ids`](Self::lookup_ids).
///
/// # What a plugin must guarantee
/// - `Ok(())` from `persist` means every event of the batch is stored as
///   durably as the plugin promises (the built-in stores survive `kill -9`):
///   the client is told so right after.
/// - A batch is all or nothing where the store allows it (SQLite: one
///   transaction). A plugin that may store part of a failed batch (jsonl,
///   webhook) must tolerate seeing those seqs again.
/// - No call panics; errors are returned as [`PersistError`].
#[async_trait]
pub trait PersistCallback: Send + Sync + 'static {
    /// A short name, used as the `plugin` label of metrics.
    fn name(&self) -> &'static str;

    /// Opens the store and reports what it holds. Called once, first.
    async fn recover(&self) -> Result<Recovered, PersistError> {
        Ok(Recovered { last_seq: clock_seq_floor(), ..Default::default() })
    }

    /// Stores one batch.
    async fn persist(&self, batch: &Batch) -> Result<(), PersistError>;

    /// Whether the store assigns seqs itself, in its commit (a store shared
    /// by several replicas: one global order). The pipeline then hands it
    /// whole groups through [`persist_new`](Self::persist_new) instead of
    /// sequencing them; the store dedupes against everything it holds and
    /// folds the events into its stored stats in the same transaction.
    fn assigns_seqs(&self) -> bool {
        false
    }

    /// Stores a group, assigning its seqs (only called when
    /// [`assigns_seqs`](Self::assigns_seqs) is `true`). All or nothing.
    async fn persist_new(&self, _batch: &NewBatch<'_>) -> Result<Committed, PersistError> {
        Err(PersistError::Unsupported { plugin: self.name(), what: "store-assigned seqs" })
    }

    /// Whether the store can take writes now (drives `/readyz`).
    async fn health(&self) -> Result<(), PersistError> {
        Ok(())
    }

    /// Whether [`query`](Self::query) is answered. Plugins that cannot are
    /// served from the in-memory activity ring.
    fn can_query(&self) -> bool {
        false
    }

    /// Stored events matching `q`.
    async fn query(&self, _q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        Err(PersistError::Unsupported { plugin: self.name(), what: "queries" })
    }

    /// Whether [`persist`](Self::persist) itself refuses a batch that holds an
    /// id already in the store, storing nothing of it and answering
    /// [`PersistError::Duplicates`] with every such id (a unique index checked
    /// by the insert). The pipeline then skips the separate
    /// [`lookup_ids`](Self::lookup_ids) round trip with durable ack: new ids
    /// cost nothing extra, and the rare old duplicate costs one retry of the
    /// group without those events.
    fn dedupes_on_insert(&self) -> bool {
        false
    }

    /// The seqs of already stored events with these ids (missing ids are
    /// absent from the map). Plugins whose dedupe window is the whole store
    /// answer this; others rely on the pipeline's window of recent ids. Used
    /// before seqs are assigned when the answer cannot wait for the insert
    /// (queued ack) or the plugin does not dedupe on insert.
    async fn lookup_ids(&self, _ids: &[&str]) -> Result<HashMap<String, u64>, PersistError> {
        Ok(HashMap::new())
    }

    /// Flushes and closes the store at shutdown.
    async fn close(&self) -> Result<(), PersistError> {
        Ok(())
    }

    // ----- retention (see crate::retention) -----

    /// The highest seq that retention (or a capacity bound) removed: every
    /// event with seq <= this is gone, every later one is kept. Resume uses
    /// it to say `truncated: true`. 0: nothing was ever removed.
    fn retention_floor(&self) -> u64 {
        0
    }

    /// One bounded step of retention: removes at most `max_events` of the
    /// oldest events that `policy` no longer keeps at time `now`, and gives
    /// freed space back. Must be short (it may run between two ingest
    /// commits) and only ever remove a prefix in seq order. The retention
    /// task calls it again soon when [`RetentionStep::more`] is set.
    async fn enforce_retention(
        &self,
        _policy: &Retention,
        _now: DateTime<Utc>,
        _max_events: usize,
    ) -> Result<RetentionStep, PersistError> {
        Err(PersistError::Unsupported { plugin: self.name(), what: "retention" })
    }

    /// The store's size for the metrics; `None` when it keeps nothing on
    /// disk.
    async fn usage(&self) -> Result<Option<StoreUsage>, PersistError> {
        Ok(None)
    }

    // ----- export / import (`sidewire export`, `sidewire import`) -----

    /// Every stored event with seq > `after`, oldest first, gauge reports
    /// included, as a stream that holds a bounded number of events at a
    /// time (an export of any size runs in constant memory).
    fn read_after(&self, _after: u64) -> Result<EventStream, PersistError> {
        Err(PersistError::Unsupported { plugin: self.name(), what: "export" })
    }

    /// Stores events that already carry their seqs (an import), with the
    /// stats as they stand after them, all or nothing. Events arrive in seq
    /// order. An event whose seq (or id) the store already holds is refused
    /// with [`PersistError::Conflict`], naming it.
    async fn import(&self, _batch: &Batch) -> Result<(), PersistError> {
        Err(PersistError::Unsupported { plugin: self.name(), what: "import" })
    }
}

/// Free bytes on its filesystem that a store whose last write failed waits
/// for before it reports healthy again (room for a few large batches and
/// a checkpoint), so `/readyz` does not flap while batches still fail.
pub const RECOVERY_HEADROOM: u64 = 4 << 20;

/// Stored events in seq order (see [`PersistCallback::read_after`]).
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
