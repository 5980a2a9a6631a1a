//! An in-memory store: nothing survives a restart. For tests, demos and
//! deployments that only want the live dashboard.

use super::{Batch, EventQuery, PersistCallback, PersistError};
use crate::event::Event;
use async_trait::async_trait;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Debug)]
pub struct MemoryPlugin {
    capacity: usize,
    /// Oldest first; at most `capacity` events, the oldest dropped first.
    events: RwLock<VecDeque<Arc<Event>>>,
}

impl MemoryPlugin {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), events: RwLock::new(VecDeque::new()) }
    }
}

/// Runs a query over events held oldest first.
pub(crate) fn query_slice<'a>(
    events: impl DoubleEndedIterator<Item = &'a Arc<Event>>,
    q: &EventQuery,
) -> Vec<Arc<Event>> {
    if q.ascending {
        events.filter(|e| q.matches(e)).take(q.limit).cloned().collect()
    } else {
        events.rev().filter(|e| q.matches(e)).take(q.limit).cloned().collect()
    }
}

#[async_trait]
impl PersistCallback for MemoryPlugin {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        let mut events = self.events.write();
        for e in &batch.events {
            if events.len() == self.capacity {
                events.pop_front();
            }
            events.push_back(e.clone());
        }
        Ok(())
    }

    fn can_query(&self) -> bool {
        true
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        Ok(query_slice(self.events.read().iter(), q))
    }
}
