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
//!
//! # Layout
//! This file holds the plugin, its open and recovery, the read pool and the
//! core trait; beside it, one file per concern: [`schema`] (migrations),
//! [`writer`] (the writer thread and its commits), [`checkpoint`] (the
//! checkpointer thread), [`query`] (queries and dedupe lookups),
//! [`retention`] and [`transfer`] (export and import).

mod checkpoint;
mod query;
mod retention;
mod schema;
mod transfer;
mod writer;

use self::checkpoint::{checkpointer, Checkpoints, WRITER_CHECKPOINT_PAGES};
use self::retention::FLOOR_KEY;
use self::schema::{ensure_incremental_vacuum, migrate};
use self::writer::writer_loop;
use super::{Batch, Dedupe, PersistCallback, PersistError, Query, Recovered, Retain, Transfer, RECOVERY_HEADROOM};
use crate::config::SqliteSync;
use crate::retention::Retention;
use crate::stats::DurableStats;
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const NAME: &str = "sqlite";

/// The WAL file is cut back to this after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use super::schema::MIGRATIONS;
    use super::*;
    use crate::event::Event;
    use crate::persist::EventQuery;
    use chrono::{DateTime, Utc};
    use futures::StreamExt;
    use std::collections::HashMap;

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

    /// Many small commits (single events) keep the WAL near the writer's
    /// backstop: the WAL is a ring of about that size, and each checkpoint
    /// fsyncs all of it that was dirtied, so its size sets the single-event
    /// p99 (checkpoint.rs, [`WRITER_CHECKPOINT_PAGES`]). 4,000 commits write
    /// ~70 MB of WAL frames; with the old 8,192-page backstop the file
    /// reached 33.8 MB.
    #[tokio::test]
    async fn small_commits_keep_the_wal_near_its_backstop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let p = SqlitePlugin::open(&path, SqliteSync::Normal).unwrap();
        p.recover().await.unwrap();
        for s in 1..=4000 {
            p.persist(&batch(&[s], s)).await.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("db.sqlite-wal")).unwrap().len();
        // 2,048 frames of a 4 KiB page and its 24-byte header: twice the
        // backstop, a fixed bound so that raising the backstop fails here.
        let bound = 2 * 1024 * (4096 + 24);
        assert!(wal <= bound, "WAL {wal} bytes after 4,000 single-event commits (bound {bound})");
        assert_eq!(seqs(&p).await.len(), 4000);
        p.close().await.unwrap();
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
