//! An in-memory store: nothing survives a restart. For tests, demos and
//! deployments that only want the live dashboard.

use super::{Batch, EventQuery, PersistCallback, PersistError};
use crate::event::Event;
use async_trait::async_trait;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct MemoryPlugin {
    capacity: usize,
    /// Oldest first; at most `capacity` events, the oldest dropped first.
    events: RwLock<VecDeque<Arc<Event>>>,
    /// The seq of the last event dropped for capacity (resume says
    /// `truncated` for a client behind it).
    dropped_upto: AtomicU64,
}

impl MemoryPlugin {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), events: RwLock::new(VecDeque::new()), dropped_upto: AtomicU64::new(0) }
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
                if let Some(old) = events.pop_front() {
                    self.dropped_upto.fetch_max(old.seq, Ordering::Relaxed);
                }
            }
            events.push_back(e.clone());
        }
        Ok(())
    }

    fn retention_floor(&self) -> u64 {
        self.dropped_upto.load(Ordering::Relaxed)
    }

    fn can_query(&self) -> bool {
        true
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        Ok(query_slice(self.events.read().iter(), q))
    }
}
