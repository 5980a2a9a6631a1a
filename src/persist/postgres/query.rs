//! Reads: the head row, the durable head, committed ranges (gap fills),
//! activity and resume queries. Every read of events stops at
//! the durable head (see [`super::commit`]).

use super::{db_err, parse_stats, row_to_event, to_i64, PostgresPlugin, PAGE};
use crate::event::Event;
use crate::persist::shared::Range;
use crate::persist::{EventQuery, PersistError, Query};
use crate::stats::DurableStats;
use async_trait::async_trait;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The durable head as SQL (an uncorrelated subquery: evaluated once).
pub(super) const DURABLE_HEAD: &str = "(SELECT coalesce(max(upto), 0) FROM sidewire_durable)";

impl PostgresPlugin {
    /// The head row: the last seq committed (durable or not) and the stored
    /// stats. Also refreshes the retention floor.
    pub(super) async fn head(&self) -> Result<(u64, Option<DurableStats>), PersistError> {
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

    /// The highest seq up to which every event is committed durably.
    pub(super) async fn read_durable_head(&self) -> Result<u64, PersistError> {
        let row = self
            .with("read durable head", move |c| {
                Box::pin(async move {
                    let sql = format!("SELECT {DURABLE_HEAD}");
                    c.query_one(&sql, &[]).await.map_err(db_err)
                })
            })
            .await?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Stored events with `after < seq <= min(upto, durable head)` (at most
    /// a page), oldest first, gauge reports included, and the stats row when
    /// it covers nothing beyond the durable head (so the stats never lag the
    /// events they go with, nor count an event that is not durable).
    pub(super) async fn range(&self, after: u64, upto: u64) -> Result<Range, PersistError> {
        let (after, upto) = (to_i64(after), to_i64(upto));
        let (rows, stats) = self
            .with("read events", move |c| {
                Box::pin(async move {
                    // One snapshot for all statements.
                    let tx = c
                        .build_transaction()
                        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()
                        .await
                        .map_err(db_err)?;
                    let cap = tx
                        .query_one(&format!("SELECT {DURABLE_HEAD}, last_seq, stats FROM sidewire_head"), &[])
                        .await
                        .map_err(db_err)?;
                    let (durable, last): (i64, i64) = (cap.get(0), cap.get(1));
                    let rows = tx
                        .query(
                            "SELECT seq, type, ts_ms, id, source, data FROM sidewire_events
                             WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                            &[&after, &upto.min(durable), &PAGE],
                        )
                        .await
                        .map_err(db_err)?;
                    tx.commit().await.map_err(db_err)?;
                    let stats = if last <= durable { cap.get::<_, Option<String>>(2) } else { None };
                    Ok((rows, stats))
                })
            })
            .await?;
        let events = rows.iter().map(row_to_event).collect();
        Ok(Range { events, stats: parse_stats(stats)? })
    }
}

#[async_trait]
impl Query for PostgresPlugin {
    /// Activity and resume queries (durable events only).
    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        let before = to_i64(q.before.unwrap_or(u64::MAX));
        let after = to_i64(q.after.unwrap_or(0));
        let limit = q.limit.min(i64::MAX as usize) as i64;
        let types = q.types.clone();
        let order = if q.ascending { "ASC" } else { "DESC" };
        let rows = self
            .with("query", move |c| {
                Box::pin(async move {
                    let base = format!(
                        "SELECT seq, type, ts_ms, id, source, data FROM sidewire_events
                         WHERE seq < $1 AND seq > $2 AND seq <= {DURABLE_HEAD}"
                    );
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
}
