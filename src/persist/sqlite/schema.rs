//! The schema: versioned migrations and the one-time switch to incremental
//! auto_vacuum.

use super::{err, NAME};
use crate::persist::PersistError;
use rusqlite::Connection;
use std::path::Path;

/// Schema migrations; `PRAGMA user_version` is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
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

pub(super) fn migrate(conn: &mut Connection) -> Result<(), PersistError> {
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
pub(super) fn ensure_incremental_vacuum(conn: &Connection, path: &Path) {
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
