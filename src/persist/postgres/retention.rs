//! Retention on PostgreSQL: deletes the oldest events in chunks; any
//! replica may run it (the deletes of two replicas at once only overlap).
//! The floor lives in the head row and only ever grows.

use super::{db_err, to_i64, PostgresPlugin};
use crate::persist::{PersistError, Retain};
use crate::retention::{Retention, RetentionStep, StoreUsage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::atomic::Ordering;

#[async_trait]
impl Retain for PostgresPlugin {
    /// The floor as last read from the head row.
    fn retention_floor(&self) -> u64 {
        self.floor.load(Ordering::SeqCst)
    }

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
