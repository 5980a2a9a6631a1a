//! The embedded default store: one SQLite file in WAL mode.
//!
//! One writer thread owns the write connection and commits each batch in one
//! transaction together with the stats row, so events, dedupe ids, counters
//! and the last seq can never disagree after a crash. Queries run on a small
//! pool of read connections (WAL lets them read while the writer commits).

use super::{Batch, EventQuery, PersistCallback, PersistError, Recovered};
use crate::config::SqliteSync;
use crate::event::Event;
use crate::stats::DurableStats;
use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use parking_lot::Mutex;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
];

/// Most idle read connections kept.
const READ_POOL: usize = 4;

enum Command {
    Persist(Batch, oneshot::Sender<Result<(), PersistError>>),
    Close(oneshot::Sender<()>),
}

pub struct SqlitePlugin {
    path: PathBuf,
    /// Bounded: the pipeline has one batch in flight, plus close.
    writer: mpsc::Sender<Command>,
    readers: Arc<Mutex<Vec<Connection>>>,
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
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(err(format!("cannot switch {} to WAL (journal_mode={mode})", path.display())));
        }
        let sync = match sync {
            SqliteSync::Normal => "NORMAL",
            SqliteSync::Full => "FULL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;")).map_err(err)?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel(16);
        std::thread::Builder::new().name("sidewire-sqlite".into()).spawn(move || writer_loop(conn, rx)).map_err(err)?;
        Ok(SqlitePlugin { path: path.to_path_buf(), writer: tx, readers: Arc::new(Mutex::new(Vec::new())) })
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, PersistError> {
        let pool = self.readers.clone();
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

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, PersistError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(make(tx)).await.map_err(|_| err("the writer thread has stopped"))?;
        rx.await.map_err(|_| err("the writer thread has stopped"))
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

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Command>) {
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Command::Persist(batch, reply) => {
                let _ = reply.send(write_batch(&mut conn, &batch));
            }
            Command::Close(reply) => {
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                drop(conn);
                let _ = reply.send(());
                return;
            }
        }
    }
}

/// Stores a batch and the stats row in one transaction. An id that is
/// already stored makes the insert a no-op (`ON CONFLICT DO NOTHING` on the
/// unique index); the transaction is then rolled back and every such id is
/// reported, so the pipeline learns about all of them in one round trip.
fn write_batch(conn: &mut Connection, batch: &Batch) -> Result<(), PersistError> {
    let tx = conn.transaction().map_err(err)?;
    let mut conflicts = Vec::new();
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (seq, type, ts_ms, id, source, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO NOTHING",
            )
            .map_err(err)?;
        for e in &batch.events {
            let inserted = insert
                .execute(params![
                    e.seq as i64,
                    &*e.kind,
                    e.timestamp.timestamp_millis(),
                    e.id.as_deref(),
                    e.source.as_deref(),
                    &*e.data_json
                ])
                .map_err(err)?;
            if inserted == 0 {
                conflicts.push(e);
            }
        }
    }
    if !conflicts.is_empty() {
        let mut ids = HashMap::with_capacity(conflicts.len());
        for e in conflicts {
            // Only an id can collide: seqs are above every stored one.
            let seq = match e.id.as_deref() {
                Some(id) => tx
                    .prepare_cached("SELECT seq FROM events WHERE id = ?1")
                    .and_then(|mut s| s.query_row([id], |r| r.get::<_, i64>(0)).optional())
                    .map_err(err)?,
                None => None,
            };
            match (e.id.as_deref(), seq) {
                (Some(id), Some(seq)) => ids.insert(id.to_string(), seq as u64),
                _ => {
                    return Err(PersistError::Corrupt {
                        plugin: NAME,
                        message: format!("seq {} is already stored", e.seq),
                    })
                }
            };
        }
        return Err(PersistError::Duplicates { plugin: NAME, ids }); // dropping `tx` rolls back
    }
    let stats = serde_json::to_string(&*batch.stats).expect("stats serialize");
    tx.prepare_cached(
        "INSERT INTO state (key, value) VALUES ('stats', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute([stats]))
    .map_err(err)?;
    tx.commit().map_err(err)
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

    async fn health(&self) -> Result<(), PersistError> {
        self.with_reader(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))).await.map(|_| ())
    }

    fn can_query(&self) -> bool {
        true
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        let q = q.clone();
        self.with_reader(move |c| run_query(c, &q)).await
    }

    fn dedupes_on_insert(&self) -> bool {
        true
    }

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

    async fn close(&self) -> Result<(), PersistError> {
        self.readers.lock().clear();
        self.call(Command::Close).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

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
