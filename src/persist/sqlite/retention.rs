//! Retention: the cutoff a policy asks for (on a read connection) and the
//! small prune chunks the writer thread runs, then free pages given back.

use super::{err, Command, Pruned, SqlitePlugin};
use crate::persist::{PersistError, Retain};
use crate::retention::{Retention, RetentionStep, StoreUsage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Pages given back per retention step (4 KiB each: 2 MiB).
const VACUUM_PAGES: i64 = 512;

/// The `state` key of the retention floor.
pub(super) const FLOOR_KEY: &str = "retention_floor";

/// One retention chunk: deletes the oldest events up to `upto` (at most
/// `max` of them), records the new floor in the same transaction, then
/// gives up to [`VACUUM_PAGES`] free pages back.
///
/// The shared `floor` rises *before* the delete commits: a resume that
/// reads after the commit must already see the new floor, or it would
/// replay past the deleted events with `truncated: false`. A failed commit
/// leaves the floor too high, which only makes a resume say `truncated`.
pub(super) fn prune(
    conn: &mut Connection,
    upto: u64,
    max: usize,
    shared_floor: &AtomicU64,
) -> rusqlite::Result<Pruned> {
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
