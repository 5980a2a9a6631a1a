//! Export and import (`sidewire export`, `sidewire import`) on PostgreSQL.

use super::query::DURABLE_HEAD;
use super::{db_err, deadline, err, row_to_event, to_i64, PostgresPlugin, NAME, PAGE};
use crate::event::Event;
use crate::persist::{Batch, EventStream, PersistError, Transfer};
use async_trait::async_trait;
use chrono::Utc;
use deadpool_postgres::Pool;
use std::sync::Arc;

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

#[async_trait]
impl Transfer for PostgresPlugin {
    /// Every durable event with seq > `after`, a page at a time.
    fn read_after(&self, after: u64) -> Result<EventStream, PersistError> {
        let reader = PageReader { pool: self.pool.clone() };
        Ok(crate::persist::paged(after, move |after| {
            let reader = reader.clone();
            async move { reader.page(after).await }
        }))
    }

    /// Stores events that carry their seqs, all or nothing, under the head
    /// lock, synchronously; refuses a seq or id the store holds. The
    /// imported events count as durable at once.
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
                tx.execute(
                    "INSERT INTO sidewire_durable AS d (replica, upto) VALUES ('', $1)
                     ON CONFLICT (replica) DO UPDATE SET upto = greatest(d.upto, EXCLUDED.upto)",
                    &[&top],
                )
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)
            })
        })
        .await
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
            let sql = format!(
                "SELECT seq, type, ts_ms, id, source, data FROM sidewire_events
                 WHERE seq > $1 AND seq <= {DURABLE_HEAD} ORDER BY seq LIMIT $2"
            );
            c.query(&sql, &[&after, &PAGE]).await.map_err(db_err)
        };
        let rows = deadline("export page", fetch).await?;
        Ok(rows.iter().map(row_to_event).collect())
    }
}
