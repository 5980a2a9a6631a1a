//! Reads on the read connections: activity and resume queries, and the
//! whole-store id lookup of dedupe.

use super::SqlitePlugin;
use crate::event::Event;
use crate::persist::{Dedupe, EventQuery, PersistError, Query};
use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use rusqlite::{params_from_iter, Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::Arc;

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

pub(super) fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Arc<Event>> {
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
