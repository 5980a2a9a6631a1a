//! An in-memory store: nothing survives a restart. For tests, demos and
//! deployments that only want the live dashboard. The events are a
//! [`Ring`] of `persist.memory_capacity`, the same ring the activity buffer
//! uses.

use super::ring::Ring;
use super::{Batch, EventQuery, PersistCallback, PersistError};
use crate::event::Event;
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug)]
pub struct MemoryPlugin {
    /// At most `persist.memory_capacity` events, the oldest dropped first.
    events: Ring,
}

impl MemoryPlugin {
    pub fn new(capacity: usize) -> Self {
        Self { events: Ring::new(capacity) }
    }
}

#[async_trait]
impl PersistCallback for MemoryPlugin {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        self.events.extend(&batch.events);
        Ok(())
    }

    /// The seq of the last event dropped for capacity (resume says
    /// `truncated` for a client behind it).
    fn retention_floor(&self) -> u64 {
        self.events.dropped_upto()
    }

    fn can_query(&self) -> bool {
        true
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        Ok(self.events.query(q))
    }
}
