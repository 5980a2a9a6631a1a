//! The embedded default store: one SQLite file in WAL mode.
//!
//! One writer thread owns the write connection and commits each batch in one
//! transaction together with the stats row, so events, dedupe ids, counters
//! and the last seq can never disagree after a crash. Queries run on a small
//! pool of read connections (WAL lets them read while the writer commits).
//!
//! # Retention and space
//! Retention deletes go through the same writer thread, one small chunk per
//! command ([`crate::retention::STEP_EVENTS`] events, then a few pages of
//! `PRAGMA incremental_vacuum`), so a chunk sits between two group commits
//! instead of competing with them for SQLite's single write lock (a second
//! write connection would only wait on `SQLITE_BUSY`). What a chunk may
//! delete (the cutoff) is computed on a read connection. The database uses
//! `auto_vacuum = INCREMENTAL` so freed pages go back to the filesystem; a
//! database created before that is converted once, at open, by a `VACUUM`.
//!
//! # A full or failing disk
//! A failed commit (`SQLITE_FULL`, `SQLITE_IOERR`) rolls its transaction
//! back and fails the batch (ingest answers 503, nothing is acknowledged).
//! From then on [`health`](SqlitePlugin::health) fails until the disk has
//! some headroom again and a one-row probe write succeeds, so `/readyz`
//! turns 200 again by itself when space returns, even if no client is
//! sending (and does not flap while batches still fail). `journal_size_limit` keeps
//! the WAL file from staying large after a checkpoint.

use super::{
    Batch, Dedupe, EventQuery, EventStream, PersistCallback, PersistError, Query, Recovered, Retain, Transfer,
    RECOVERY_HEADROOM,
};
use crate::config::SqliteSync;
use crate::event::Event;
use crate::retention::{Retention, RetentionStep, StoreUsage};
use crate::stats::DurableStats;
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use parking_lot::Mutex;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const NAME: &str = "sqlite";

/// Schema migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: events, dedupe index, per-type index, state
    "CREATE TABLE events (
         seq    INTEGER PRIMARY KEY,
         type   TEXT    NOT NULL,
         ts_ms  INTEGER NOT NULL,
         id     TEXT,
         source TEXT,
         data   TEXT    NOT NULL
     );
     CREATE UNIQUE INDEX events_by_id ON events(id) WHERE id IS NOT NULL;
     CREATE INDEX events_by_type ON events(type, seq);
     CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;",
    // 2: when each event was stored (retention_max_age counts from it; rows
    // from before this migration and imported rows fall back to ts_ms).
    // The switch to incremental auto_vacuum that goes with it needs a VACUUM
    // outside a transaction: see `ensure_incremental_vacuum`.
    "ALTER TABLE events ADD COLUMN stored_ms INTEGER;",
];

/// Pages given back per retention step (4 KiB each: 2 MiB).
const VACUUM_PAGES: i64 = 512;
/// The WAL file is cut back to this after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// Events per page of an export read.
const EXPORT_PAGE: usize = 1_000;
/// The `state` key of the retention floor.
const FLOOR_KEY: &str = "retention_floor";

/// Most idle read connections kept.
const READ_POOL: usize = 4;

enum Command {
    Persist(Batch, oneshot::Sender<Result<(), PersistError>>),
    /// One retention chunk: delete at most `max` events with seq <= `upto`,
    /// then give some free pages back.
    Prune {
        upto: u64,
        max: usize,
        reply: oneshot::Sender<Result<Pruned, PersistError>>,
    },
    Import(Batch, oneshot::Sender<Result<(), PersistError>>),
    /// A one-row write: can the store take writes again?
    Probe(oneshot::Sender<Result<(), PersistError>>),
    Close(oneshot::Sender<()>),
}

/// What one prune chunk did.
#[derive(Debug, Clone, Copy)]
struct Pruned {
    deleted: u64,
    /// Events at or below the cutoff are left.
    more_rows: bool,
    /// Free pages are left to give back.
    more_pages: bool,
}

/// The checkpointer thread, owned by the writer thread: stopped (and waited
/// for) before the writer's last checkpoint at close, so the final
/// `TRUNCATE` checkpoint and the file's shrinking never race with it; stopped
/// too when the writer thread ends for any other reason.
struct Checkpoints {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Checkpoints {
    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

pub struct SqlitePlugin {
    path: PathBuf,
    /// Bounded: the pipeline has one batch in flight, plus one retention
    /// chunk, health probes and close.
    writer: mpsc::Sender<Command>,
    readers: Readers,
    /// Shared with the writer thread.
    shared: Arc<Shared>,
    /// The retention cutoff computed for a policy, reused by the steps of
    /// one pass (computing it scans up to `max_events` rows).
    plan: Mutex<Option<(Retention, u64)>>,
}

/// What the writer thread and the async side both see.
#[derive(Debug, Default)]
struct Shared {
    /// See [`Retain::retention_floor`].
    floor: AtomicU64,
    /// The last write failed; health probes until one succeeds.
    write_failed: AtomicBool,
    /// The last retention step left free pages to give back.
    pages_pending: AtomicBool,
}

/// A small pool of read-only connections, opened on demand.
#[derive(Clone)]
struct Readers {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
}

impl std::fmt::Debug for SqlitePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlitePlugin").field("path", &self.path).finish()
    }
}

fn err(e: impl std::fmt::Display) -> PersistError {
    PersistError::unavailable(NAME, e)
}

impl SqlitePlugin {
    /// Opens (creating when missing) the database and migrates its schema.
    pub fn open(path: &Path, sync: SqliteSync) -> Result<SqlitePlugin, PersistError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path).map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        // Takes effect only on a database that has no table yet (a new one).
        conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL;").map_err(err)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(format!("cannot switch {} to WAL (journal_mode={mode})", path.display())));
        }
        let sync = match sync {
            SqliteSync::Normal => "NORMAL",
            SqliteSync::Full => "FULL",
        };
        // Checkpoints run on their own thread (see `checkpointer`); the
        // writer's automatic checkpoint stays as a backstop at a larger size.
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT};
             PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES};"
        ))
        .map_err(err)?;
        migrate(&mut conn)?;
        ensure_incremental_vacuum(&conn, path);
        // A first retention step checks for free pages left from before.
        let shared = Arc::new(Shared { pages_pending: AtomicBool::new(true), ..Shared::default() });
        let floor: Option<String> = conn
            .query_row("SELECT value FROM state WHERE key = ?1", [FLOOR_KEY], |r| r.get(0))
            .optional()
            .map_err(err)?;
        shared.floor.store(floor.and_then(|f| f.parse().ok()).unwrap_or(0), Ordering::SeqCst);
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel();
        let checkpoint_path = path.to_path_buf();
        let checkpoints = std::thread::Builder::new()
            .name("sidewire-sqlite-ckpt".into())
            .spawn(move || checkpointer(&checkpoint_path, stopped))
            .map_err(err)?;
        let (tx, rx) = mpsc::channel(16);
        let writer_shared = shared.clone();
        let checkpoints = Checkpoints { stop: stop_checkpoints, thread: checkpoints };
        std::thread::Builder::new()
            .name("sidewire-sqlite".into())
            .spawn(move || writer_loop(conn, rx, writer_shared, checkpoints))
            .map_err(err)?;
        Ok(SqlitePlugin {
            path: path.to_path_buf(),
            writer: tx,
            readers: Readers { path: path.to_path_buf(), pool: Arc::new(Mutex::new(Vec::new())) },
            shared,
            plan: Mutex::new(None),
        })
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, PersistError> {
        self.readers.run(f).await
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, PersistError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(make(tx)).await.map_err(|_| err("the writer thread has stopped"))?;
        rx.await.map_err(|_| err("the writer thread has stopped"))
    }
}

impl Readers {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, PersistError> {
        let pool = self.pool.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match pool.lock().pop() {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(err)?;
                    c.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
                    c
                }
            };
            let out = f(&conn).map_err(err);
            let mut pool = pool.lock();
            if pool.len() < READ_POOL {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(err)?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), PersistError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).map_err(err)? as usize;
    if version > MIGRATIONS.len() {
        return Err(PersistError::Corrupt {
            plugin: NAME,
            message: format!("schema version {version} is newer than this sidewire knows ({})", MIGRATIONS.len()),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(version = i + 1, "sqlite schema migrated");
    }
    Ok(())
}

/// Converts a database created without incremental auto_vacuum (before
/// schema 2) once. `VACUUM` rewrites the whole file and needs as much free
/// space again; when it fails the store works on, only without giving
/// space back (logged).
fn ensure_incremental_vacuum(conn: &Connection, path: &Path) {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap_or(2);
    if mode == 2 {
        return;
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(path = %path.display(), bytes = size,
        "converting the SQLite store to incremental auto_vacuum (a one-time VACUUM; large stores take a while)");
    let started = std::time::Instant::now();
    match conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;") {
        Ok(()) => tracing::info!(path = %path.display(), seconds = started.elapsed().as_secs_f64(),
            "SQLite store converted to incremental auto_vacuum"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e,
            "cannot convert the SQLite store to incremental auto_vacuum (needs free space as large as the file); \
             retention still deletes, but the file will not shrink; retried at the next start"),
    }
}

/// Leaves a transaction that a failed commit could not roll back (a full
/// disk can fail the rollback's own journal write); without this every
/// later `BEGIN` would fail and the store would never recover.
fn reset_transaction(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "sqlite: cannot roll back a failed transaction");
        }
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Command>, shared: Arc<Shared>, checkpoints: Checkpoints) {
    let mut checkpoints = Some(checkpoints);
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Command::Persist(batch, reply) => {
                reset_transaction(&conn);
                let result = write_batch(&mut conn, &batch, Utc::now().timestamp_millis());
                // Refused duplicates are an answer, not a failing store.
                let failed = matches!(result, Err(ref e) if !matches!(e, PersistError::Duplicates { .. }));
                shared.write_failed.store(failed, Ordering::SeqCst);
                let _ = reply.send(result);
            }
            Command::Prune { upto, max, reply } => {
                reset_transaction(&conn);
                let result = prune(&mut conn, upto, max, &shared.floor).map_err(err);
                let _ = reply.send(result);
            }
            Command::Import(batch, reply) => {
                reset_transaction(&conn);
                let _ = reply.send(import_batch(&mut conn, &batch));
            }
            Command::Probe(reply) => {
                reset_transaction(&conn);
                let result = probe(&conn).map_err(err);
                if result.is_ok() {
                    shared.write_failed.store(false, Ordering::SeqCst);
                }
                let _ = reply.send(result);
            }
            Command::Close(reply) => {
                if let Some(c) = checkpoints.take() {
                    c.stop();
                }
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                drop(conn);
                let _ = reply.send(());
                return;
            }
        }
    }
}

/// Inserts the batch's events and, when every one went in, its stats row.
/// `stored_ms`: the store time of these events (`None` for imports). An id
/// that is already stored makes its insert a no-op (`ON CONFLICT DO
/// NOTHING` on the unique index); such events are returned and nothing else
/// is written (the caller rolls back).
fn insert_events<'b>(
    tx: &rusqlite::Transaction<'_>,
    batch: &'b Batch,
    stored_ms: Option<i64>,
) -> rusqlite::Result<Vec<&'b Arc<Event>>> {
    let mut conflicts = Vec::new();
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (seq, type, ts_ms, id, source, data, stored_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT DO NOTHING",
    )?;
    for e in &batch.events {
        let inserted = insert.execute(params![
            e.seq as i64,
            &*e.kind,
            e.timestamp.timestamp_millis(),
            e.id.as_deref(),
            e.source.as_deref(),
            &*e.data_json,
            stored_ms
        ])?;
        if inserted == 0 {
            conflicts.push(e);
        }
    }
    if conflicts.is_empty() {
        let stats =
            serde_json::to_string(&*batch.stats).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        tx.prepare_cached(
            "INSERT INTO state (key, value) VALUES ('stats', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )?
        .execute([stats])?;
    }
    Ok(conflicts)
}

/// Stores a batch and the stats row in one transaction. When ids of it are
/// already stored, the transaction is rolled back and every such id is
/// reported with its seq, so the pipeline learns about all of them in one
/// round trip.
fn write_batch(conn: &mut Connection, batch: &Batch, now_ms: i64) -> Result<(), PersistError> {
    let tx = conn.transaction().map_err(err)?;
    let conflicts = insert_events(&tx, batch, Some(now_ms)).map_err(err)?;
    if conflicts.is_empty() {
        return tx.commit().map_err(err);
    }
    let mut ids = HashMap::with_capacity(conflicts.len());
    let mut by_id = tx.prepare_cached("SELECT seq FROM events WHERE id = ?1").map_err(err)?;
    for e in conflicts {
        // Only an id can collide: seqs are above every stored one.
        let seq = match e.id.as_deref() {
            Some(id) => by_id.query_row([id], |r| r.get::<_, i64>(0)).optional().map_err(err)?,
            None => None,
        };
        match (e.id.as_deref(), seq) {
            (Some(id), Some(seq)) => ids.insert(id.to_string(), seq as u64),
            _ => {
                return Err(PersistError::Corrupt { plugin: NAME, message: format!("seq {} is already stored", e.seq) })
            }
        };
    }
    Err(PersistError::Duplicates { plugin: NAME, ids }) // dropping `tx` rolls back
}

/// An import batch: refused as a whole when a seq or an id is already stored.
fn import_batch(conn: &mut Connection, batch: &Batch) -> Result<(), PersistError> {
    let tx = conn.transaction().map_err(err)?;
    {
        let mut by_seq = tx.prepare_cached("SELECT 1 FROM events WHERE seq = ?1").map_err(err)?;
        let mut by_id = tx.prepare_cached("SELECT seq FROM events WHERE id = ?1").map_err(err)?;
        for e in &batch.events {
            if by_seq.exists([e.seq as i64]).map_err(err)? {
                return Err(PersistError::Conflict {
                    plugin: NAME,
                    message: format!("seq {} is already in the store; an import never overwrites events", e.seq),
                });
            }
            if let Some(id) = e.id.as_deref() {
                if let Some(seq) = by_id.query_row([id], |r| r.get::<_, i64>(0)).optional().map_err(err)? {
                    return Err(PersistError::Conflict {
                        plugin: NAME,
                        message: format!("the id {id:?} of seq {} is already in the store as seq {seq}", e.seq),
                    });
                }
            }
        }
    }
    if !insert_events(&tx, batch, None).map_err(err)?.is_empty() {
        // Checked above: only a duplicate seq or id inside the file itself.
        return Err(PersistError::Conflict { plugin: NAME, message: "the import batch repeats a seq or an id".into() });
    }
    tx.commit().map_err(err)
}

/// How often the checkpointer copies committed WAL pages into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The writer's own automatic checkpoint, at 8,192 WAL pages (32 MiB): a
/// backstop, not the main path. A WAL starts over from its beginning only
/// when a write finds every frame copied back, and under sustained full-speed
/// ingest the checkpointer thread is always a few commits behind the writer,
/// so without it the WAL grew without bound (4.2 GB after two minutes at
/// 90,000 events/s). When the writer checkpoints, nothing is appended
/// meanwhile, so it completes and the WAL restarts; the checkpointer has
/// copied most pages by then, so the writer's share is small.
const WRITER_CHECKPOINT_PAGES: u32 = 8192;

/// Copies the WAL into the database file on its own connection and thread,
/// every [`CHECKPOINT_EVERY`], with `PASSIVE` checkpoints: they never wait
/// for the writer or readers, and the writer never waits for them. With
/// SQLite's automatic checkpoint alone, the commit that crossed 1,000 WAL
/// pages did the whole copy (and its fsync) itself, and every request in that
/// group commit waited: milliseconds at the p99 of single-event ingest (see
/// [`WRITER_CHECKPOINT_PAGES`] for the backstop). Stops when `stop`
/// disconnects (the plugin is dropped).
fn checkpointer(path: &Path, stop: std::sync::mpsc::Receiver<()>) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sqlite checkpointer cannot open the store; the WAL grows until restart");
            return;
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_millis(100));
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "sqlite checkpoint failed; retried");
        }
    }
}

/// One retention chunk: deletes the oldest events up to `upto` (at most
/// `max` of them), records the new floor in the same transaction, then
/// gives up to [`VACUUM_PAGES`] free pages back.
///
/// The shared `floor` rises *before* the delete commits: a resume that
/// reads after the commit must already see the new floor, or it would
/// replay past the deleted events with `truncated: false`. A failed commit
/// leaves the floor too high, which only makes a resume say `truncated`.
fn prune(conn: &mut Connection, upto: u64, max: usize, shared_floor: &AtomicU64) -> rusqlite::Result<Pruned> {
    let floor = shared_floor.load(Ordering::SeqCst);
    let upto = upto.min(i64::MAX as u64) as i64;
    let tx = conn.transaction()?;
    let top: Option<i64> = tx.query_row(
        "SELECT MAX(seq) FROM (SELECT seq FROM events WHERE seq <= ?1 ORDER BY seq LIMIT ?2)",
        params![upto, max.min(i64::MAX as usize) as i64],
        |r| r.get(0),
    )?;
    let mut deleted = 0;
    let mut new_floor = floor;
    if let Some(top) = top {
        deleted = tx.execute("DELETE FROM events WHERE seq <= ?1", [top])? as u64;
        new_floor = new_floor.max(top as u64);
        tx.execute(
            "INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![FLOOR_KEY, new_floor.to_string()],
        )?;
        shared_floor.fetch_max(new_floor, Ordering::SeqCst);
    }
    tx.commit()?;
    let more_rows = top.is_some_and(|t| t < upto);
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let mut more_pages = false;
    if free > 0 {
        // Only shrinks the file when auto_vacuum is incremental; a no-op otherwise.
        conn.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES});"))?;
        let auto: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        more_pages = auto == 2 && conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))? > 0;
    }
    Ok(Pruned { deleted, more_rows, more_pages })
}

/// A tiny write, to learn whether the store takes writes again.
fn probe(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO state (key, value) VALUES ('probe', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [Utc::now().timestamp_millis().to_string()],
    )
    .map(drop)
}

/// The highest seq `policy` removes at `now` (`None`: nothing). Retention
/// keeps a suffix in seq order, so each limit is a seq cutoff and the
/// strictest one wins. Runs on a read connection.
fn retention_cutoff(c: &Connection, policy: &Retention, now: DateTime<Utc>) -> rusqlite::Result<Option<u64>> {
    let Some((min, max)) = c
        .query_row("SELECT MIN(seq), MAX(seq) FROM events", [], |r| {
            Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .map(|(a, b)| a.zip(b))?
    else {
        return Ok(None);
    };
    let mut cutoff: Option<i64> = None;
    let mut raise = |s: Option<i64>| cutoff = cutoff.max(s);
    if let Some(n) = policy.max_events {
        // By seq arithmetic, O(1) (counting rows would walk n of them every
        // pass): seqs skipped by a failed commit count as events, so a store
        // with such gaps keeps slightly fewer than n, never more.
        let n = n.min(i64::MAX as u64) as i64;
        raise(Some(max.saturating_sub(n)).filter(|&s| s >= min));
    }
    if let Some(age) = policy.max_age {
        let before = now.timestamp_millis().saturating_sub(age.as_millis().min(i64::MAX as u128) as i64);
        // The first event young enough to keep; everything before it goes.
        // stored_ms grows with seq, so this is a clean prefix.
        let first_kept: Option<i64> = c
            .query_row(
                "SELECT seq FROM events WHERE COALESCE(stored_ms, ts_ms) >= ?1 ORDER BY seq LIMIT 1",
                [before],
                |r| r.get(0),
            )
            .optional()?;
        raise(Some(first_kept.map_or(max, |s| s - 1)).filter(|&s| s >= min));
    }
    if let Some(limit) = policy.max_bytes {
        let (pages, free, page_size): (i64, i64, i64) = c.query_row(
            "SELECT (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count), \
                    (SELECT page_size FROM pragma_page_size)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let used = ((pages - free).max(0) * page_size) as u64;
        if used > limit {
            // Seq gaps make `span` an overestimate of the count, so the
            // per-event size is an underestimate and a pass removes at least
            // enough; the next pass measures again.
            let span = (max - min + 1) as u64;
            let per_event = (used / span).max(1);
            let excess = used - limit;
            let n = excess.div_ceil(per_event) as i64;
            raise(Some((min + n - 1).min(max)));
        }
    }
    Ok(cutoff.map(|s| s as u64))
}

fn lookup(conn: &Connection, ids: &[String]) -> rusqlite::Result<HashMap<String, u64>> {
    let mut stmt = conn.prepare_cached("SELECT seq FROM events WHERE id = ?1")?;
    let mut out = HashMap::new();
    for id in ids {
        if let Some(seq) = stmt.query_row([id], |r| r.get::<_, i64>(0)).optional()? {
            out.insert(id.clone(), seq as u64);
        }
    }
    Ok(out)
}

fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Arc<Event>> {
    let seq: i64 = r.get(0)?;
    let kind: String = r.get(1)?;
    let ts: i64 = r.get(2)?;
    let id: Option<String> = r.get(3)?;
    let source: Option<String> = r.get(4)?;
    let data: String = r.get(5)?;
    let ts = Utc.timestamp_millis_opt(ts).single().unwrap_or_default();
    Ok(Arc::new(Event::new(seq as u64, &kind, ts, id.as_deref(), source.as_deref(), &data)))
}

fn run_query(conn: &Connection, q: &EventQuery) -> rusqlite::Result<Vec<Arc<Event>>> {
    let mut sql = String::from("SELECT seq, type, ts_ms, id, source, data FROM events WHERE seq < ?1 AND seq > ?2");
    let mut args: Vec<rusqlite::types::Value> = vec![
        (q.before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64) as i64).into(),
        (q.after.unwrap_or(0).min(i64::MAX as u64) as i64).into(),
    ];
    if q.types.is_empty() {
        sql.push_str(" AND type <> 'stats_update'");
    } else {
        sql.push_str(" AND type IN (");
        for (i, t) in q.types.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            args.push(t.clone().into());
        }
        sql.push(')');
    }
    sql.push_str(if q.ascending { " ORDER BY seq ASC" } else { " ORDER BY seq DESC" });
    sql.push_str(" LIMIT ?");
    args.push((q.limit.min(i64::MAX as usize) as i64).into());
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), row_to_event)?;
    rows.collect()
}

#[async_trait]
impl PersistCallback for SqlitePlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn recover(&self) -> Result<Recovered, PersistError> {
        self.with_reader(|c| {
            let stats: Option<String> =
                c.query_row("SELECT value FROM state WHERE key = 'stats'", [], |r| r.get(0)).optional()?;
            let max: Option<i64> = c.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
            Ok((stats, max.unwrap_or(0) as u64))
        })
        .await
        .and_then(|(stats, max_seq)| {
            let stats = match stats {
                Some(text) => Some(
                    serde_json::from_str::<DurableStats>(&text)
                        .map_err(|e| PersistError::Corrupt { plugin: NAME, message: format!("stored stats: {e}") })?,
                ),
                None => None,
            };
            let last_seq = stats.as_ref().map_or(0, |s| s.last_seq).max(max_seq);
            Ok(Recovered { stats, last_seq, ..Default::default() })
        })
    }

    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        let batch = batch.clone();
        self.call(|tx| Command::Persist(batch, tx)).await?
    }

    /// After a failed write: a one-row write through the writer (so
    /// `/readyz` recovers by itself once the disk has room again).
    /// Otherwise a read, which does not wait for a commit in progress.
    async fn health(&self) -> Result<(), PersistError> {
        if self.shared.write_failed.load(Ordering::SeqCst) {
            // A one-row write may still fit on a disk that has no room for
            // a batch: also ask for some headroom, so readiness does not
            // flap while batches keep failing.
            let folder = match self.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let free = tokio::task::spawn_blocking(move || crate::retention::free_bytes(&folder)).await.map_err(err)?;
            if free.is_some_and(|f| f < RECOVERY_HEADROOM) {
                return Err(err(format!(
                    "the last write failed and the disk has {} bytes free (waiting for {RECOVERY_HEADROOM})",
                    free.unwrap_or(0)
                )));
            }
            return self.call(Command::Probe).await?;
        }
        self.with_reader(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))).await.map(|_| ())
    }

    async fn close(&self) -> Result<(), PersistError> {
        self.readers.pool.lock().clear();
        self.call(Command::Close).await
    }

    fn as_query(&self) -> Option<&dyn Query> {
        Some(self)
    }

    fn as_dedupe(&self) -> Option<&dyn Dedupe> {
        Some(self)
    }

    fn as_retention(&self) -> Option<&dyn Retain> {
        Some(self)
    }

    fn as_transfer(&self) -> Option<&dyn Transfer> {
        Some(self)
    }
}

#[async_trait]
impl Query for SqlitePlugin {
    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        let q = q.clone();
        self.with_reader(move |c| run_query(c, &q)).await
    }
}

/// The unique index on `id`: the insert itself refuses a stored id.
#[async_trait]
impl Dedupe for SqlitePlugin {
    /// Runs on a read connection, beside the writer's commits. It sees what
    /// is committed; ids still on their way to the store are in the
    /// pipeline's window of recent ids.
    async fn lookup_ids(&self, ids: &[&str]) -> Result<HashMap<String, u64>, PersistError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.with_reader(move |c| lookup(c, &ids)).await
    }

    fn dedupes_on_insert(&self) -> bool {
        true
    }
}

#[async_trait]
impl Retain for SqlitePlugin {
    fn retention_floor(&self) -> u64 {
        self.shared.floor.load(Ordering::SeqCst)
    }

    async fn enforce_retention(
        &self,
        policy: &Retention,
        now: DateTime<Utc>,
        max_events: usize,
    ) -> Result<RetentionStep, PersistError> {
        let planned = (*self.plan.lock()).filter(|(p, upto)| p == policy && *upto > self.retention_floor());
        let upto = match planned {
            Some((_, upto)) => Some(upto),
            None => {
                let p = *policy;
                let upto = self.with_reader(move |c| retention_cutoff(c, &p, now)).await?;
                *self.plan.lock() = upto.map(|u| (p, u));
                upto
            }
        };
        if upto.is_none() && !self.shared.pages_pending.load(Ordering::SeqCst) {
            // Nothing due and no space to give back: leave the writer alone.
            return Ok(RetentionStep::default());
        }
        let upto = upto.unwrap_or(0);
        let pruned = self.call(|reply| Command::Prune { upto, max: max_events, reply }).await??;
        self.shared.pages_pending.store(pruned.more_pages, Ordering::SeqCst);
        if !pruned.more_rows {
            // The next step measures afresh (new events, a new `now`).
            *self.plan.lock() = None;
        }
        Ok(RetentionStep { deleted: pruned.deleted, more: pruned.more_rows || pruned.more_pages })
    }

    async fn usage(&self) -> Result<Option<StoreUsage>, PersistError> {
        let path = self.path.clone();
        let oldest: Option<i64> = self
            .with_reader(|c| {
                c.query_row("SELECT COALESCE(stored_ms, ts_ms) FROM events ORDER BY seq LIMIT 1", [], |r| r.get(0))
                    .optional()
            })
            .await?;
        tokio::task::spawn_blocking(move || {
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            let bytes = size(&path) + size(Path::new(&wal));
            let folder = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let limit_bytes = crate::retention::free_bytes(&folder).map(|f| f + bytes);
            Some(StoreUsage { bytes, limit_bytes, oldest_stored_at: oldest.map(|ms| ms as f64 / 1000.0) })
        })
        .await
        .map_err(err)
    }
}

#[async_trait]
impl Transfer for SqlitePlugin {
    fn read_after(&self, after: u64) -> Result<EventStream, PersistError> {
        let readers = self.readers.clone();
        Ok(super::paged(after, move |after| {
            let readers = readers.clone();
            async move {
                readers
                    .run(move |c| {
                        let mut stmt = c.prepare_cached(
                            "SELECT seq, type, ts_ms, id, source, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                        )?;
                        let rows = stmt
                            .query_map(params![after.min(i64::MAX as u64) as i64, EXPORT_PAGE as i64], row_to_event)?;
                        rows.collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .await
            }
        }))
    }

    async fn import(&self, batch: &Batch) -> Result<(), PersistError> {
        let batch = batch.clone();
        self.call(|tx| Command::Import(batch, tx)).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use futures::StreamExt;

    fn batch(seqs: &[u64], stats_seq: u64) -> Batch {
        let events = seqs
            .iter()
            .map(|&s| Arc::new(Event::new(s, "x", crate::event::now_ms(), Some(&format!("id-{s}")), None, "{\"a\":1}")))
            .collect();
        Batch {
            events,
            stats: Arc::new(DurableStats {
                last_seq: stats_seq,
                events_total: seqs.len() as u64,
                ..Default::default()
            }),
        }
    }

    fn big_batch(from: u64, n: u64, pad: usize) -> Batch {
        let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(pad));
        let events = (from..from + n)
            .map(|s| Arc::new(Event::new(s, "x", crate::event::now_ms(), Some(&format!("id-{s}")), None, &data)))
            .collect();
        Batch { events, stats: Arc::new(DurableStats { last_seq: from + n - 1, ..Default::default() }) }
    }

    /// Steps retention until it says it is done; returns the events removed.
    async fn run_retention(p: &SqlitePlugin, policy: &Retention, now: DateTime<Utc>) -> u64 {
        let mut deleted = 0;
        for _ in 0..10_000 {
            let step = p.enforce_retention(policy, now, 100).await.unwrap();
            deleted += step.deleted;
            if !step.more {
                return deleted;
            }
        }
        panic!("retention did not finish");
    }

    async fn seqs(p: &SqlitePlugin) -> Vec<u64> {
        let q = EventQuery { limit: 100_000, ascending: true, ..Default::default() };
        p.query(&q).await.unwrap().iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn retention_by_count_and_age_removes_a_prefix_and_remembers_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let p = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap();
        p.recover().await.unwrap();
        p.persist(&big_batch(1, 500, 10)).await.unwrap();
        let now = Utc::now();
        let by_count = Retention { max_events: Some(120), ..Default::default() };
        assert_eq!(run_retention(&p, &by_count, now).await, 380);
        assert_eq!(seqs(&p).await, (381..=500).collect::<Vec<u64>>());
        assert_eq!(p.retention_floor(), 380);
        assert_eq!(run_retention(&p, &by_count, now).await, 0, "nothing more is due");

        // Age: everything was stored "now"; an hour later with a 30 min limit all goes.
        let by_age = Retention { max_age: Some(std::time::Duration::from_secs(1800)), ..Default::default() };
        assert_eq!(run_retention(&p, &by_age, now).await, 0);
        p.persist(&big_batch(501, 10, 10)).await.unwrap();
        let later = now + chrono::Duration::hours(1);
        assert_eq!(run_retention(&p, &by_age, later).await, 130);
        assert!(seqs(&p).await.is_empty());
        assert_eq!(p.retention_floor(), 510);
        // Dedupe of removed ids is forgotten (documented).
        assert!(p.lookup_ids(&["id-400"]).await.unwrap().is_empty());
        p.close().await.unwrap();

        let p = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap();
        assert_eq!(p.retention_floor(), 510, "the floor survives a restart");
        assert_eq!(p.recover().await.unwrap().last_seq, 510);
    }

    #[tokio::test]
    async fn retention_by_bytes_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let p = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap();
        p.recover().await.unwrap();
        for i in 0..20 {
            p.persist(&big_batch(1 + i * 100, 100, 2000)).await.unwrap();
        }
        p.call(Command::Close).await.unwrap();
        let full = std::fs::metadata(&path).unwrap().len();
        assert!(full > 4_000_000, "{full}");
        let p = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap();
        let limit = 1_000_000;
        let policy = Retention { max_bytes: Some(limit), ..Default::default() };
        let deleted = run_retention(&p, &policy, Utc::now()).await;
        // A pass may stop a little above the limit (page granularity); the next one converges.
        run_retention(&p, &policy, Utc::now()).await;
        let kept = seqs(&p).await;
        assert_eq!(kept.first().copied(), Some(p.retention_floor() + 1));
        assert!(deleted > 1000 && !kept.is_empty(), "deleted {deleted}, kept {}", kept.len());
        p.call(Command::Close).await.unwrap();
        let small = std::fs::metadata(&path).unwrap().len();
        assert!(small <= limit + 64 * 1024, "the file gave the space back: {full} -> {small}");
        let usage = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap().usage().await.unwrap().unwrap();
        assert!(usage.bytes >= small && usage.limit_bytes.unwrap() > usage.bytes);
    }

    #[tokio::test]
    async fn an_old_database_is_converted_to_incremental_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!("PRAGMA journal_mode=WAL; {} PRAGMA user_version=1;", MIGRATIONS[0])).unwrap();
            c.execute("INSERT INTO events (seq, type, ts_ms, data) VALUES (1, 'x', 0, '{}')", []).unwrap();
            let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, 0);
        }
        let p = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap();
        assert_eq!(p.recover().await.unwrap().last_seq, 1);
        let mode: i64 = p.with_reader(|c| c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))).await.unwrap();
        assert_eq!(mode, 2);
        // Migrated rows have no store time: age falls back to their timestamp (1970).
        let policy = Retention { max_age: Some(std::time::Duration::from_secs(86_400)), ..Default::default() };
        assert_eq!(run_retention(&p, &policy, Utc::now()).await, 1);
    }

    #[tokio::test]
    async fn import_keeps_seqs_and_refuses_collisions() {
        let dir = tempfile::tempdir().unwrap();
        let p = SqlitePlugin::open(&dir.path().join("db.sqlite"), SqliteSync::Normal).unwrap();
        p.recover().await.unwrap();
        p.import(&batch(&[10, 20], 20)).await.unwrap();
        let e = p.import(&batch(&[30, 20], 30)).await.unwrap_err();
        assert!(matches!(&e, PersistError::Conflict { message, .. } if message.contains("seq 20")), "{e}");
        assert_eq!(seqs(&p).await, vec![10, 20], "a refused batch stores nothing");
        let mut moved = batch(&[40], 40);
        moved.events = vec![Arc::new(Event::new(40, "x", crate::event::now_ms(), Some("id-10"), None, "{}"))];
        let e = p.import(&moved).await.unwrap_err();
        assert!(e.to_string().contains("already in the store as seq 10"), "{e}");
        let all: Vec<u64> = p.read_after(0).unwrap().map(|e| e.unwrap().seq).collect().await;
        assert_eq!(all, vec![10, 20]);
        let after: Vec<u64> = p.read_after(10).unwrap().map(|e| e.unwrap().seq).collect().await;
        assert_eq!(after, vec![20]);
    }

    #[tokio::test]
    async fn stores_queries_dedupes_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/db.sqlite");
        {
            let p = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap();
            assert_eq!(p.recover().await.unwrap().last_seq, 0);
            p.persist(&batch(&[1, 2, 3], 3)).await.unwrap();
            let found = p.lookup_ids(&["id-2", "nope"]).await.unwrap();
            assert_eq!(found, HashMap::from([("id-2".to_string(), 2)]));
            let q = EventQuery { limit: 2, ..Default::default() };
            let got: Vec<u64> = p.query(&q).await.unwrap().iter().map(|e| e.seq).collect();
            assert_eq!(got, vec![3, 2]);
            let q = EventQuery { limit: 10, after: Some(1), ascending: true, ..Default::default() };
            let got: Vec<u64> = p.query(&q).await.unwrap().iter().map(|e| e.seq).collect();
            assert_eq!(got, vec![2, 3]);
            // a stored id fails the whole batch and is reported with its seq
            match p.persist(&batch(&[4, 2], 4)).await {
                Err(PersistError::Duplicates { ids, .. }) => assert_eq!(ids, HashMap::from([("id-2".into(), 2)])),
                other => panic!("expected Duplicates, got {other:?}"),
            }
            let q = EventQuery { limit: 10, ..Default::default() };
            assert_eq!(p.query(&q).await.unwrap().len(), 3, "nothing of the refused batch is stored");
            p.close().await.unwrap();
        }
        let p = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap();
        let r = p.recover().await.unwrap();
        assert_eq!(r.last_seq, 3);
        assert_eq!(r.stats.unwrap().events_total, 3);
    }
}
