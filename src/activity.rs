//! Recent activity (contract section 4): from the store when the persist
//! plugin answers queries, else from a bounded in-memory ring of the newest
//! `activity.buffer_size` events.

use crate::event::Event;
use crate::persist::{EventQuery, PersistCallback, PersistError};
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;

/// The newest events, oldest first. Bounded: the oldest are dropped first.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    events: RwLock<VecDeque<Arc<Event>>>,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), events: RwLock::new(VecDeque::new()) }
    }

    pub fn extend(&self, batch: &[Arc<Event>]) {
        let mut events = self.events.write();
        for e in batch {
            if events.len() == self.capacity {
                events.pop_front();
            }
            events.push_back(e.clone());
        }
    }

    pub fn query(&self, q: &EventQuery) -> Vec<Arc<Event>> {
        crate::persist::memory::query_slice(self.events.read().iter(), q)
    }
}

/// Where activity queries are answered.
pub struct Activity {
    plugin: Arc<dyn PersistCallback>,
    /// Filled only when the plugin cannot answer queries.
    pub ring: Option<Ring>,
}

impl Activity {
    pub fn new(plugin: Arc<dyn PersistCallback>, buffer_size: usize) -> Self {
        let ring = (!plugin.can_query()).then(|| Ring::new(buffer_size));
        Self { plugin, ring }
    }

    /// Records committed events (only kept when served from the ring).
    pub fn record(&self, batch: &[Arc<Event>]) {
        if let Some(ring) = &self.ring {
            ring.extend(batch);
        }
    }

    pub async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        match &self.ring {
            Some(ring) => Ok(ring.query(q)),
            None => self.plugin.query(q).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_filters() {
        let ring = Ring::new(3);
        let evs: Vec<_> = (1..=5)
            .map(|s| {
                Arc::new(Event::new(
                    s,
                    if s == 4 { "stats_update" } else { "x" },
                    crate::event::now_ms(),
                    None,
                    None,
                    "{}",
                ))
            })
            .collect();
        ring.extend(&evs);
        let q = EventQuery { limit: 10, ..Default::default() };
        assert_eq!(ring.query(&q).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 3]);
        let q = EventQuery { limit: 10, types: vec!["stats_update".into()], ..Default::default() };
        assert_eq!(ring.query(&q).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
    }
}
