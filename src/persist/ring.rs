//! A bounded ring of the newest events, oldest first, answering
//! [`EventQuery`]s: the whole store of the `memory` plugin, and the activity
//! buffer (`crate::activity`) for plugins that cannot answer queries.

use super::EventQuery;
use crate::event::Event;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;

/// The newest events, oldest first. Bounded: the oldest are dropped first.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<Arc<Event>>,
    /// The highest seq dropped for capacity (0: none): every event at or
    /// below it is gone, so a resume from behind it is `truncated`.
    dropped_upto: u64,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: RwLock::new(Inner::default()) }
    }

    pub fn extend(&self, batch: &[Arc<Event>]) {
        let mut inner = self.inner.write();
        for e in batch {
            if inner.events.len() == self.capacity {
                if let Some(old) = inner.events.pop_front() {
                    inner.dropped_upto = inner.dropped_upto.max(old.seq);
                }
            }
            inner.events.push_back(e.clone());
        }
    }

    pub fn query(&self, q: &EventQuery) -> Vec<Arc<Event>> {
        let inner = self.inner.read();
        if q.ascending {
            inner.events.iter().filter(|e| q.matches(e)).take(q.limit).cloned().collect()
        } else {
            inner.events.iter().rev().filter(|e| q.matches(e)).take(q.limit).cloned().collect()
        }
    }

    /// The highest seq dropped for capacity; 0 when nothing was.
    pub fn dropped_upto(&self) -> u64 {
        self.inner.read().dropped_upto
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
        let q = EventQuery { limit: 10, ascending: true, ..Default::default() };
        assert_eq!(ring.query(&q).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 5]);
        let q = EventQuery { limit: 10, types: vec!["stats_update".into()], ..Default::default() };
        assert_eq!(ring.query(&q).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(ring.dropped_upto(), 2);
    }
}
