//! Export (paged reads in seq order) and import (through the writer thread).

use super::query::row_to_event;
use super::{Command, SqlitePlugin};
use crate::persist::{Batch, EventStream, PersistError, Transfer};
use async_trait::async_trait;
use rusqlite::params;

/// Events per page of an export read.
const EXPORT_PAGE: usize = 1_000;

#[async_trait]
impl Transfer for SqlitePlugin {
    fn read_after(&self, after: u64) -> Result<EventStream, PersistError> {
        let readers = self.readers.clone();
        Ok(crate::persist::paged(after, move |after| {
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
