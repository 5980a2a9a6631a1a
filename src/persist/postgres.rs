//! The shared store for several replicas: PostgreSQL (CONTRACT section 8).
//!
//! # One global order
//! Seqs are assigned by the store, inside the commit. Every group commit
//! (one transaction) first locks the single row of `sidewire_head`
//! (`SELECT ... FOR UPDATE`), which holds the last seq and the stats. While a
//! transaction holds that lock no other replica can commit events, so:
//! - the seqs a transaction takes (`last_seq + 1 ..`) become visible exactly
//!   when it commits, after every lower seq: readers of `seq > cursor` never
//!   skip a row that commits later (a `SEQUENCE` would not give that: its
//!   values become visible out of commit order);
//! - a failed transaction rolls the counter back too, so seqs never skip;
//! - the dedupe check (`id = ANY(...)`) inside the lock is exact: no other
//!   writer can insert the same id between the check and the insert (the
//!   unique index on `id` stays as a safety net);
//! - the stats row is read and written in the same transaction as the
//!   events, so counters, `eventsByType` and `lastSeq` always agree with the
//!   stored events, also after a crash of any replica.
//!
//! The price is that commits are serial across the cluster: the lock is
//! held for about three round trips (read head and ids, write events and
//! head, commit with its fsync). Throughput comes from group commit: each
//! replica's pipeline sends everything that queued during the previous
//! commit as one multi-row `INSERT ... SELECT FROM unnest(...)`.
//!
//! # Migrations
//! Versioned (`sidewire_schema`), each in its own transaction that first
//! takes a transaction-level advisory lock, so replicas starting at the same
//! moment migrate one after the other and the later ones find nothing to do.
//!
//! # Faults
//! Every call has a deadline ([`CALL_TIMEOUT`]); a connection that timed out
//! is dropped, not returned to the pool. After a failed write, writes fail
//! fast (without waiting for a stalled server) except for one attempt per
//! [`RETRY_INTERVAL`], so ingest answers 503 at once while the database is
//! away and recovers by itself.

use super::{Batch, Committed, EventQuery, EventStream, NewBatch, PersistCallback, PersistError, Recovered};
use crate::event::Event;
use crate::retention::{Retention, RetentionStep, StoreUsage};
use crate::stats::DurableStats;
use crate::tls::postgres::{MakeRustls, PgTarget};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Row;

const NAME: &str = "postgres";

/// Deadline of one call (a connection from the pool, the statements, the
/// commit). A stalled server fails the call after this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed write, at most one write attempt per this interval; the
/// others fail at once.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Events per page of an export read or a replay.
const PAGE: i64 = 1_000;

/// Key of the advisory lock that serializes migrations across replicas.
const MIGRATION_LOCK: i64 = 0x5349_4445_5749_5245; // "SIDEWIRE"

/// Schema migrations; `sidewire_schema.version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: events with their dedupe and per-type indexes, the head row (last
    // seq, stats, retention floor), the replicas' heartbeats.
    "CREATE TABLE sidewire_events (
         seq       BIGINT PRIMARY KEY,
         type      TEXT   NOT NULL,
         ts_ms     BIGINT NOT NULL,
         id        TEXT   UNIQUE,
         source    TEXT,
         data      TEXT   NOT NULL,
         stored_ms BIGINT NOT NULL
     );
     CREATE INDEX sidewire_events_by_type ON sidewire_events (type, seq);
     CREATE INDEX sidewire_events_by_stored ON sidewire_events (stored_ms);
     CREATE TABLE sidewire_head (
         one             BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
         last_seq        BIGINT  NOT NULL,
         stats           TEXT,
         retention_floor BIGINT  NOT NULL DEFAULT 0
     );
     INSERT INTO sidewire_head (last_seq) VALUES (0);
     CREATE TABLE sidewire_replicas (
         name                TEXT PRIMARY KEY,
         active_connections  BIGINT NOT NULL,
         messages_per_minute BIGINT NOT NULL,
         seen_at             TIMESTAMPTZ NOT NULL
     );",
    // 2: which process wrote a heartbeat row (tells two replicas that share
    // a name apart).
    "ALTER TABLE sidewire_replicas ADD COLUMN instance TEXT NOT NULL DEFAULT '';",
];

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/db` (or key=value form).
    pub url: String,
    /// Most connections this replica opens.
    pub pool_size: usize,
    /// `broadcast.backend = "postgres"`: the channel each commit notifies
    /// (`NOTIFY` inside the transaction, delivered at commit, in commit
    /// order) with the commit's last seq.
    pub notify_channel: Option<String>,
}

/// The `postgres` plugin. Cheap to share (`Arc`); the cluster code uses the
/// same pool for heartbeats and replays.
pub struct PostgresPlugin {
    pool: Pool,
    config: tokio_postgres::Config,
    /// The URL's TLS settings (libpq's `sslmode`, `sslrootcert`, …) and the
    /// connector built from them, shared with the LISTEN connection.
    target: PgTarget,
    tls: MakeRustls,
    notify_channel: Option<String>,
    /// See [`PersistCallback::retention_floor`].
    floor: AtomicU64,
    /// When the last write failed (writes fail fast until the next attempt).
    failed_at: Mutex<Option<Instant>>,
    /// The retention cutoff planned for a policy (reused by one pass).
    plan: Mutex<Option<(Retention, u64)>>,
    /// For log lines: the URL without its password.
    redacted: String,
}

impl std::fmt::Debug for PostgresPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPlugin").field("url", &self.redacted).finish()
    }
}

fn err(e: impl std::fmt::Display) -> PersistError {
    PersistError::unavailable(NAME, e)
}

/// A database error with its SQLSTATE and detail (tokio-postgres' own
/// Display says only "db error").
fn db_err(e: tokio_postgres::Error) -> PersistError {
    match e.as_db_error() {
        Some(db) => err(format!(
            "{} ({}){}",
            db.message(),
            db.code().code(),
            match db.detail() {
                Some(d) => format!(": {d}"),
                None => String::new(),
            }
        )),
        // tokio-postgres' own Display is only the first link ("error
        // communicating with the server"): say the cause too.
        None => err(crate::tls::postgres::chain(&e)),
    }
}

fn corrupt(message: impl Into<String>) -> PersistError {
    PersistError::Corrupt { plugin: NAME, message: message.into() }
}

/// Runs `f` with the call deadline.
async fn deadline<T>(what: &str, f: impl Future<Output = Result<T, PersistError>>) -> Result<T, PersistError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(err(format!("{what}: no answer from PostgreSQL within {} s", CALL_TIMEOUT.as_secs()))),
    }
}

impl PostgresPlugin {
    /// Builds the pool; connects lazily (the first call, [`recover`], also
    /// migrates the schema).
    ///
    /// [`recover`]: PersistCallback::recover
    pub fn new(options: PostgresOptions) -> Result<PostgresPlugin, PersistError> {
        let redacted = crate::config::redact_url(&options.url);
        let invalid =
            |e: String| PersistError::Unavailable { plugin: NAME, message: format!("persist.postgres_url: {e}") };
        let target = crate::tls::postgres::parse(&options.url).map_err(invalid)?;
        let tls = target.tls.connector().map_err(invalid)?;
        let mut config = target.config.clone();
        config.connect_timeout(CALL_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("sidewire");
        }
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(err)?;
        Ok(PostgresPlugin {
            pool,
            config,
            target,
            tls,
            notify_channel: options.notify_channel,
            floor: AtomicU64::new(0),
            failed_at: Mutex::new(None),
            plan: Mutex::new(None),
            redacted,
        })
    }

    /// The URL without its password.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// The connection settings, for a dedicated (non-pooled) connection
    /// such as the LISTEN session of the `postgres` broadcast backend.
    pub fn connect_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector for such a connection.
    pub fn tls(&self) -> MakeRustls {
        self.tls.clone()
    }

    /// A connection error in words: a TLS failure with host, sslmode and
    /// what failed; anything else with its causes.
    pub fn describe(&self, e: &tokio_postgres::Error) -> String {
        self.target.describe(e)
    }

    /// A pooled connection, or the reason there is none.
    async fn client(&self) -> Result<deadpool_postgres::Object, PersistError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) if e.as_db_error().is_none() => err(self.describe(&e)),
            deadpool_postgres::PoolError::Backend(e) => db_err(e),
            deadpool_postgres::PoolError::Timeout(_) => {
                err(format!("no connection to {} within {} s", self.redacted, CALL_TIMEOUT.as_secs()))
            }
            other => err(format!("{}: {other}", self.redacted)),
        })
    }

    /// Runs `f` on a pooled connection under the call deadline. A
    /// connection whose call timed out or broke is not reused.
    async fn with<T, F>(&self, what: &str, f: F) -> Result<T, PersistError>
    where
        F: for<'c> FnOnce(&'c mut deadpool_postgres::Object) -> futures::future::BoxFuture<'c, Result<T, PersistError>>,
    {
        let mut client = deadline(what, self.client()).await?;
        let result = tokio::time::timeout(CALL_TIMEOUT, f(&mut client)).await;
        self.finish(client, what, result)
    }

    /// The end of a call: a connection whose call timed out or broke is not
    /// reused.
    fn finish<T>(
        &self,
        client: deadpool_postgres::Object,
        what: &str,
        result: Result<Result<T, PersistError>, tokio::time::error::Elapsed>,
    ) -> Result<T, PersistError> {
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if client.is_closed() {
                    let _ = deadpool_postgres::Object::take(client);
                }
                Err(e)
            }
            Err(_) => {
                // The statement may still be running: do not hand this
                // connection to anyone else.
                let _ = deadpool_postgres::Object::take(client);
                Err(err(format!("{what}: no answer from PostgreSQL within {} s", CALL_TIMEOUT.as_secs())))
            }
        }
    }

    /// Runs pending migrations (safe when several replicas start at once).
    async fn migrate(&self) -> Result<(), PersistError> {
        for attempt in 0.. {
            let step = self
                .with("migrate", move |c| {
                    Box::pin(async move {
                        let tx = c.transaction().await.map_err(db_err)?;
                        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_err)?;
                        let exists: bool = tx
                            .query_one("SELECT to_regclass('sidewire_schema') IS NOT NULL", &[])
                            .await
                            .map_err(db_err)?
                            .get(0);
                        if !exists {
                            tx.batch_execute("CREATE TABLE sidewire_schema (version INTEGER NOT NULL)")
                                .await
                                .map_err(db_err)?;
                        }
                        let version: i32 =
                            match tx.query_opt("SELECT version FROM sidewire_schema", &[]).await.map_err(db_err)? {
                                Some(row) => row.get(0),
                                None => {
                                    tx.execute("INSERT INTO sidewire_schema (version) VALUES (0)", &[])
                                        .await
                                        .map_err(db_err)?;
                                    0
                                }
                            };
                        let version = version.max(0) as usize;
                        if version > MIGRATIONS.len() {
                            return Err(corrupt(format!(
                                "schema version {version} is newer than this sidewire knows ({})",
                                MIGRATIONS.len()
                            )));
                        }
                        if version == MIGRATIONS.len() {
                            tx.commit().await.map_err(db_err)?;
                            return Ok(None);
                        }
                        tx.batch_execute(MIGRATIONS[version]).await.map_err(db_err)?;
                        let next = (version + 1) as i32;
                        tx.execute("UPDATE sidewire_schema SET version = $1", &[&next]).await.map_err(db_err)?;
                        tx.commit().await.map_err(db_err)?;
                        Ok(Some(next))
                    })
                })
                .await;
            match step {
                Ok(Some(v)) => tracing::info!(version = v, "postgres schema migrated"),
                Ok(None) => return Ok(()),
                // Two replicas creating `sidewire_schema` at the very same
                // moment can collide before the lock exists; once more.
                Err(e) if attempt < 3 && !matches!(e, PersistError::Corrupt { .. }) => {
                    tracing::debug!(error = %e, "postgres migration attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The stored stats and last seq (the head row).
    pub async fn head(&self) -> Result<(u64, Option<DurableStats>), PersistError> {
        let row = self
            .with("read head", move |c| {
                Box::pin(async move {
                    c.query_one("SELECT last_seq, stats, retention_floor FROM sidewire_head", &[]).await.map_err(db_err)
                })
            })
            .await?;
        let floor: i64 = row.get(2);
        self.floor.store(floor.max(0) as u64, Ordering::SeqCst);
        Ok((row.get::<_, i64>(0).max(0) as u64, parse_stats(row.get(1))?))
    }

    /// Stored events with `after < seq <= upto` (at most 1,000), oldest
    /// first, gauge reports included, and the stats row as it stood when
    /// they were read (so the stats never lag the events they go with).
    pub async fn read_range(
        &self,
        after: u64,
        upto: u64,
    ) -> Result<(Vec<Arc<Event>>, Option<DurableStats>), PersistError> {
        let (after, upto) = (to_i64(after), to_i64(upto));
        let (rows, stats) = self
            .with("read events", move |c| {
                Box::pin(async move {
                    // One snapshot for both statements.
                    let tx = c
                        .build_transaction()
                        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()
                        .await
                        .map_err(db_err)?;
                    let rows = tx
                        .query(
                            "SELECT seq, type, ts_ms, id, source, data FROM sidewire_events
                             WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                            &[&after, &upto, &PAGE],
                        )
                        .await
                        .map_err(db_err)?;
                    let head = tx.query_one("SELECT stats FROM sidewire_head", &[]).await.map_err(db_err)?;
                    tx.commit().await.map_err(db_err)?;
                    Ok((rows, head.get::<_, Option<String>>(0)))
                })
            })
            .await?;
        let events = rows.iter().map(row_to_event).collect();
        Ok((events, parse_stats(stats)?))
    }

    /// This replica's heartbeat: writes its row (as process `instance`) and
    /// answers the rows seen within `expiry` (this one included), and which
    /// process wrote this name's row before (another `instance` after this
    /// process's own first heartbeat means two replicas share the name).
    pub async fn heartbeat(
        &self,
        name: &str,
        instance: &str,
        active_connections: u64,
        messages_per_minute: u64,
        expiry: Duration,
    ) -> Result<(Vec<ReplicaRow>, Option<String>), PersistError> {
        let (name, instance) = (name.to_string(), instance.to_string());
        let expiry_ms = expiry.as_millis() as f64;
        let (active, mpm) = (to_i64(active_connections), to_i64(messages_per_minute));
        let (previous, rows) = self
            .with("heartbeat", move |c| {
                Box::pin(async move {
                    // The CTE reads the row as it was before this upsert.
                    let previous = c
                        .query_one(
                            "WITH old AS (SELECT instance FROM sidewire_replicas WHERE name = $1)
                             INSERT INTO sidewire_replicas
                                 (name, active_connections, messages_per_minute, seen_at, instance)
                             VALUES ($1, $2, $3, now(), $4)
                             ON CONFLICT (name) DO UPDATE SET active_connections = $2,
                                 messages_per_minute = $3, seen_at = now(), instance = $4
                             RETURNING (SELECT instance FROM old)",
                            &[&name, &active, &mpm, &instance],
                        )
                        .await
                        .map_err(db_err)?
                        .get::<_, Option<String>>(0);
                    let rows = c
                        .query(
                            "SELECT name, active_connections, messages_per_minute FROM sidewire_replicas
                             WHERE seen_at > now() - make_interval(secs => $1::float8 / 1000.0)",
                            &[&expiry_ms],
                        )
                        .await
                        .map_err(db_err)?;
                    Ok((previous, rows))
                })
            })
            .await?;
        let rows = rows
            .iter()
            .map(|r| ReplicaRow {
                name: r.get(0),
                active_connections: r.get::<_, i64>(1).max(0) as u64,
                messages_per_minute: r.get::<_, i64>(2).max(0) as u64,
            })
            .collect();
        Ok((rows, previous))
    }

    /// Removes this replica's heartbeat (a clean shutdown: it stops
    /// counting at once instead of after the expiry).
    pub async fn leave(&self, name: &str) -> Result<(), PersistError> {
        let name = name.to_string();
        self.with("leave", move |c| {
            Box::pin(async move {
                c.execute("DELETE FROM sidewire_replicas WHERE name = $1", &[&name]).await.map_err(db_err).map(|_| ())
            })
        })
        .await
    }

    fn fail_fast(&self) -> Result<(), PersistError> {
        if let Some(at) = *self.failed_at.lock() {
            if at.elapsed() < RETRY_INTERVAL {
                return Err(err("the database was unreachable a moment ago; retry later"));
            }
        }
        Ok(())
    }

    fn note_write(&self, result: &Result<Committed, PersistError>) {
        let mut failed = self.failed_at.lock();
        match result {
            Err(PersistError::Unavailable { .. }) => *failed = Some(Instant::now()),
            _ => *failed = None,
        }
    }
}

/// One live replica's heartbeat row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub name: String,
    pub active_connections: u64,
    pub messages_per_minute: u64,
}

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn parse_stats(text: Option<String>) -> Result<Option<DurableStats>, PersistError> {
    text.map(|t| serde_json::from_str::<DurableStats>(&t).map_err(|e| corrupt(format!("stored stats: {e}"))))
        .transpose()
}

fn row_to_event(r: &Row) -> Arc<Event> {
    let seq: i64 = r.get(0);
    let kind: &str = r.get(1);
    let ts: i64 = r.get(2);
    let id: Option<&str> = r.get(3);
    let source: Option<&str> = r.get(4);
    let data: &str = r.get(5);
    let ts = Utc.timestamp_millis_opt(ts).single().unwrap_or_default();
    Arc::new(Event::new(seq.max(0) as u64, kind, ts, id, source, data))
}

/// The columns of a multi-row insert, one array per column.
#[derive(Default)]
struct Columns<'a> {
    seq: Vec<i64>,
    kind: Vec<&'a str>,
    ts_ms: Vec<i64>,
    id: Vec<Option<&'a str>>,
    source: Vec<Option<&'a str>>,
    data: Vec<&'a str>,
    stored_ms: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, e: &'a Event, stored_ms: i64) {
        self.seq.push(to_i64(e.seq));
        self.kind.push(&e.kind);
        self.ts_ms.push(e.timestamp.timestamp_millis());
        self.id.push(e.id.as_deref());
        self.source.push(e.source.as_deref());
        self.data.push(&e.data_json);
        self.stored_ms.push(stored_ms);
    }
}

const INSERT_EVENTS: &str = "INSERT INTO sidewire_events (seq, type, ts_ms, id, source, data, stored_ms)
     SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::int8[])";

/// One group commit (see the module docs): lock the head, dedupe, assign
/// seqs, fold stats, insert, update the head, notify, commit.
async fn commit_new(
    c: &mut deadpool_postgres::Object,
    batch: &NewBatch<'_>,
    notify: Option<&str>,
) -> Result<Committed, PersistError> {
    let tx = c.transaction().await.map_err(db_err)?;
    let ids: Vec<&str> = batch.events.iter().filter_map(|e| e.id.as_deref()).collect();
    // Pipelined: the id lookup runs after the lock is granted (statements
    // of one connection run in order), so it sees every earlier commit.
    let head = tx.query_one("SELECT last_seq, stats FROM sidewire_head FOR UPDATE", &[]);
    let known = async {
        if ids.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query("SELECT id, seq FROM sidewire_events WHERE id = ANY($1)", &[&ids]).await
        }
    };
    let (head, known) = futures::try_join!(head, known).map_err(db_err)?;
    let mut last: u64 = head.get::<_, i64>(0).max(0) as u64;
    let mut stats = parse_stats(head.get(1))?.unwrap_or_default();
    let mut first_seen: HashMap<&str, u64> =
        known.iter().map(|r| (r.get::<_, &str>(0), r.get::<_, i64>(1).max(0) as u64)).collect();
    let mut seqs = Vec::with_capacity(batch.events.len());
    let mut stored = Vec::with_capacity(batch.events.len());
    let mut events = Vec::new();
    for e in &batch.events {
        if let Some(seq) = e.id.as_deref().and_then(|id| first_seen.get(id)) {
            seqs.push(*seq);
            stored.push(false);
            continue;
        }
        last += 1;
        if let Some(id) = e.id.as_deref() {
            first_seen.insert(id, last);
        }
        stats.apply(last, e, batch.counters);
        events.push(Arc::new(Event::from_new(last, e)));
        seqs.push(last);
        stored.push(true);
    }
    if events.is_empty() {
        tx.rollback().await.map_err(db_err)?;
        return Ok(Committed { seqs, stored, batch: Batch { events, stats: Arc::new(stats) } });
    }
    let now = Utc::now().timestamp_millis();
    let mut cols = Columns::default();
    for e in &events {
        cols.push(e, now);
    }
    let stats_text = serde_json::to_string(&stats).map_err(err)?;
    let last_i = to_i64(last);
    let insert_args: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
        [&cols.seq, &cols.kind, &cols.ts_ms, &cols.id, &cols.source, &cols.data, &cols.stored_ms];
    let update_args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&last_i, &stats_text];
    let insert = tx.execute(INSERT_EVENTS, &insert_args);
    let update = tx.execute("UPDATE sidewire_head SET last_seq = $1, stats = $2", &update_args);
    let payload = last.to_string();
    let notified = async {
        match notify {
            Some(channel) => tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).await.map(|_| ()),
            None => Ok(()),
        }
    };
    futures::try_join!(insert, update, notified).map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(Committed { seqs, stored, batch: Batch { events, stats: Arc::new(stats) } })
}

#[async_trait]
impl PersistCallback for PostgresPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn recover(&self) -> Result<Recovered, PersistError> {
        self.migrate().await?;
        let (last_seq, stats) = self.head().await?;
        Ok(Recovered { stats, last_seq, ..Default::default() })
    }

    /// Batches always come through [`persist_new`](Self::persist_new);
    /// this stores already sequenced events (which only an import makes).
    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        self.import(batch).await
    }

    fn assigns_seqs(&self) -> bool {
        true
    }

    async fn persist_new(&self, batch: &NewBatch<'_>) -> Result<Committed, PersistError> {
        self.fail_fast()?;
        let notify = self.notify_channel.as_deref();
        let mut client = deadline("commit", self.client()).await?;
        let result = tokio::time::timeout(CALL_TIMEOUT, commit_new(&mut client, batch, notify)).await;
        let result = self.finish(client, "commit", result);
        self.note_write(&result);
        result
    }

    async fn health(&self) -> Result<(), PersistError> {
        self.with("health check", move |c| {
            Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()).map_err(db_err) })
        })
        .await
    }

    fn can_query(&self) -> bool {
        true
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        let before = to_i64(q.before.unwrap_or(u64::MAX));
        let after = to_i64(q.after.unwrap_or(0));
        let limit = q.limit.min(i64::MAX as usize) as i64;
        let types = q.types.clone();
        let order = if q.ascending { "ASC" } else { "DESC" };
        let rows = self
            .with("query", move |c| {
                Box::pin(async move {
                    let base =
                        "SELECT seq, type, ts_ms, id, source, data FROM sidewire_events WHERE seq < $1 AND seq > $2";
                    if types.is_empty() {
                        let sql = format!("{base} AND type <> 'stats_update' ORDER BY seq {order} LIMIT $3");
                        c.query(&sql, &[&before, &after, &limit]).await
                    } else {
                        let sql = format!("{base} AND type = ANY($3) ORDER BY seq {order} LIMIT $4");
                        c.query(&sql, &[&before, &after, &types, &limit]).await
                    }
                    .map_err(db_err)
                })
            })
            .await?;
        Ok(rows.iter().map(row_to_event).collect())
    }

    fn dedupes_on_insert(&self) -> bool {
        true
    }

    async fn lookup_ids(&self, ids: &[&str]) -> Result<HashMap<String, u64>, PersistError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let rows = self
            .with("lookup ids", move |c| {
                Box::pin(async move {
                    c.query("SELECT id, seq FROM sidewire_events WHERE id = ANY($1)", &[&ids]).await.map_err(db_err)
                })
            })
            .await?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64)).collect())
    }

    async fn close(&self) -> Result<(), PersistError> {
        self.pool.close();
        Ok(())
    }

    fn retention_floor(&self) -> u64 {
        self.floor.load(Ordering::SeqCst)
    }

    /// Deletes the oldest events in chunks; any replica may run it (the
    /// deletes of two replicas at once only overlap). The floor lives in the
    /// head row and only ever grows.
    async fn enforce_retention(
        &self,
        policy: &Retention,
        now: DateTime<Utc>,
        max_events: usize,
    ) -> Result<RetentionStep, PersistError> {
        let planned = (*self.plan.lock()).filter(|(p, upto)| p == policy && *upto > self.retention_floor());
        let upto = match planned {
            Some((_, upto)) => upto,
            None => {
                let upto = self.retention_cutoff(policy, now).await?;
                match upto {
                    Some(u) => {
                        *self.plan.lock() = Some((*policy, u));
                        u
                    }
                    None => return Ok(RetentionStep::default()),
                }
            }
        };
        let (upto_i, max) = (to_i64(upto), max_events.min(i64::MAX as usize) as i64);
        let (deleted, more) = self
            .with("retention", move |c| {
                Box::pin(async move {
                    let tx = c.transaction().await.map_err(db_err)?;
                    let gone = tx
                        .query(
                            "DELETE FROM sidewire_events WHERE seq IN
                               (SELECT seq FROM sidewire_events WHERE seq <= $1 ORDER BY seq LIMIT $2)
                             RETURNING seq",
                            &[&upto_i, &max],
                        )
                        .await
                        .map_err(db_err)?;
                    let top = gone.iter().map(|r| r.get::<_, i64>(0)).max();
                    if let Some(top) = top {
                        tx.execute("UPDATE sidewire_head SET retention_floor = GREATEST(retention_floor, $1)", &[&top])
                            .await
                            .map_err(db_err)?;
                    }
                    tx.commit().await.map_err(db_err)?;
                    Ok((gone.len() as u64, gone.len() as i64 == max))
                })
            })
            .await?;
        if deleted > 0 {
            // Everything up to the planned cutoff goes; the floor follows
            // the deletes as they happen.
            let _ = self.head().await;
        }
        if !more {
            *self.plan.lock() = None;
        }
        Ok(RetentionStep { deleted, more })
    }

    async fn usage(&self) -> Result<Option<StoreUsage>, PersistError> {
        let row = self
            .with("usage", move |c| {
                Box::pin(async move {
                    c.query_one(
                        "SELECT pg_total_relation_size('sidewire_events'),
                                (SELECT stored_ms FROM sidewire_events ORDER BY seq LIMIT 1)",
                        &[],
                    )
                    .await
                    .map_err(db_err)
                })
            })
            .await?;
        let bytes: i64 = row.get(0);
        let oldest: Option<i64> = row.get(1);
        Ok(Some(StoreUsage {
            bytes: bytes.max(0) as u64,
            limit_bytes: None,
            oldest_stored_at: oldest.map(|ms| ms as f64 / 1000.0),
        }))
    }

    fn read_after(&self, after: u64) -> Result<EventStream, PersistError> {
        let reader = PageReader { pool: self.pool.clone() };
        Ok(super::paged(after, move |after| {
            let reader = reader.clone();
            async move { reader.page(after).await }
        }))
    }

    /// Stores events that carry their seqs, all or nothing, under the head
    /// lock; refuses a seq or id the store holds.
    async fn import(&self, batch: &Batch) -> Result<(), PersistError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let batch = batch.clone();
        self.with("import", move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(db_err)?;
                let head = tx.query_one("SELECT last_seq FROM sidewire_head FOR UPDATE", &[]).await.map_err(db_err)?;
                let last: i64 = head.get(0);
                let seqs: Vec<i64> = batch.events.iter().map(|e| to_i64(e.seq)).collect();
                let ids: Vec<&str> = batch.events.iter().filter_map(|e| e.id.as_deref()).collect();
                let clash = tx
                    .query_opt(
                        "SELECT seq, id FROM sidewire_events WHERE seq = ANY($1) OR id = ANY($2) LIMIT 1",
                        &[&seqs, &ids],
                    )
                    .await
                    .map_err(db_err)?;
                if let Some(row) = clash {
                    let (seq, id): (i64, Option<String>) = (row.get(0), row.get(1));
                    return Err(PersistError::Conflict {
                        plugin: NAME,
                        message: format!(
                            "the store already holds seq {seq}{}",
                            id.map(|i| format!(" (id {i:?})")).unwrap_or_default()
                        ),
                    });
                }
                let now = Utc::now().timestamp_millis();
                let mut cols = Columns::default();
                for e in &batch.events {
                    cols.push(e, now);
                }
                tx.execute(
                    INSERT_EVENTS,
                    &[&cols.seq, &cols.kind, &cols.ts_ms, &cols.id, &cols.source, &cols.data, &cols.stored_ms],
                )
                .await
                .map_err(db_err)?;
                let top = seqs.iter().copied().max().unwrap_or(0).max(last);
                let stats = serde_json::to_string(&*batch.stats).map_err(err)?;
                tx.execute("UPDATE sidewire_head SET last_seq = $1, stats = $2", &[&top, &stats])
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            })
        })
        .await
    }
}

impl PostgresPlugin {
    /// The highest seq the policy no longer keeps, if any.
    async fn retention_cutoff(&self, policy: &Retention, now: DateTime<Utc>) -> Result<Option<u64>, PersistError> {
        let policy = *policy;
        let age_cutoff_ms = policy.max_age.map(|a| now.timestamp_millis() - a.as_millis().min(i64::MAX as u128) as i64);
        // Counting rows scans the table: only when a count or size limit needs it.
        let sql = if policy.max_events.is_some() || policy.max_bytes.is_some() {
            "SELECT (SELECT max(seq) FROM sidewire_events WHERE stored_ms < $1),
                    (SELECT count(*) FROM sidewire_events), pg_total_relation_size('sidewire_events')"
        } else {
            "SELECT (SELECT max(seq) FROM sidewire_events WHERE stored_ms < $1), 0::int8, 0::int8"
        };
        let row = self
            .with("retention cutoff", move |c| {
                Box::pin(async move { c.query_one(sql, &[&age_cutoff_ms.unwrap_or(i64::MIN)]).await.map_err(db_err) })
            })
            .await?;
        let by_age: Option<i64> = row.get(0);
        let count: i64 = row.get(1);
        let bytes: i64 = row.get(2);
        let mut cutoff: Option<u64> = policy.max_age.and(by_age).map(|s| s.max(0) as u64);
        // Count and size limits: keep the newest `keep` events (a size limit
        // becomes a count from the average stored size of an event).
        let mut keep: Option<u64> = policy.max_events;
        if let Some(max_bytes) = policy.max_bytes {
            if count > 0 && bytes as u64 > max_bytes {
                let per_event = (bytes as u64 / count as u64).max(1);
                let fits = max_bytes / per_event;
                keep = Some(keep.map_or(fits, |k| k.min(fits)));
            }
        }
        if let Some(keep) = keep.filter(|k| count as u64 > *k) {
            cutoff = cutoff.max(self.nth_newest_seq(keep).await?);
        }
        Ok(cutoff.filter(|c| *c > self.retention_floor()))
    }

    /// The seq just below the newest `keep` events.
    async fn nth_newest_seq(&self, keep: u64) -> Result<Option<u64>, PersistError> {
        let keep = to_i64(keep);
        let row = self
            .with("retention cutoff", move |c| {
                Box::pin(async move {
                    c.query_opt("SELECT seq FROM sidewire_events ORDER BY seq DESC OFFSET $1 LIMIT 1", &[&keep])
                        .await
                        .map_err(db_err)
                })
            })
            .await?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }
}

/// Reads export pages on its own handle of the pool.
#[derive(Clone)]
struct PageReader {
    pool: Pool,
}

impl PageReader {
    async fn page(&self, after: u64) -> Result<Vec<Arc<Event>>, PersistError> {
        let after = to_i64(after);
        let fetch = async {
            let c = self.pool.get().await.map_err(err)?;
            c.query(
                "SELECT seq, type, ts_ms, id, source, data FROM sidewire_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &PAGE],
            )
            .await
            .map_err(db_err)
        };
        let rows = deadline("export page", fetch).await?;
        Ok(rows.iter().map(row_to_event).collect())
    }
}
