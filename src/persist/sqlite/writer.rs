//! The writer thread: owns the write connection and runs its commands one
//! after another (group commits, imports, retention chunks, probes, close).

use super::checkpoint::Checkpoints;
use super::retention::prune;
use super::{err, Command, Shared, NAME};
use crate::event::Event;
use crate::persist::{Batch, PersistError};
use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

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

pub(super) fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    checkpoints: Checkpoints,
) {
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

/// A tiny write, to learn whether the store takes writes again.
fn probe(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO state (key, value) VALUES ('probe', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [Utc::now().timestamp_millis().to_string()],
    )
    .map(drop)
}
