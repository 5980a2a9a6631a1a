//! An in-memory store: nothing survives a restart. For tests, demos and
//! deployments that only want the live dashboard. The events are a
//! [`Ring`] of `persist.memory_capacity`, the same ring the activity buffer
//! uses.

use super::ring::Ring;
use super::{Batch, EventQuery, PersistCallback, PersistError, Query, Retain};
use crate::event::Event;
use crate::retention::{Retention, RetentionStep, StoreUsage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
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

    fn as_query(&self) -> Option<&dyn Query> {
        Some(self)
    }

    fn as_retention(&self) -> Option<&dyn Retain> {
        Some(self)
    }
}

#[async_trait]
impl Query for MemoryPlugin {
    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        Ok(self.events.query(q))
    }
}

/// Its capacity is its retention: the ring drops the oldest events itself.
#[async_trait]
impl Retain for MemoryPlugin {
    /// The seq of the last event dropped for capacity (resume says
    /// `truncated` for a client behind it).
    fn retention_floor(&self) -> u64 {
        self.events.dropped_upto()
    }

    /// Nothing to do: the policy's limits do not apply to the ring, whose
    /// bound is `persist.memory_capacity`.
    async fn enforce_retention(
        &self,
        _policy: &Retention,
        _now: DateTime<Utc>,
        _max_events: usize,
    ) -> Result<RetentionStep, PersistError> {
        Ok(RetentionStep::default())
    }

    /// Nothing on disk.
    async fn usage(&self) -> Result<Option<StoreUsage>, PersistError> {
        Ok(None)
    }
}
