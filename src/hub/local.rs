//! In-process hub: one bounded broadcast ring shared by all connections.
//! Publishing is O(1) whatever the number of clients; each connection task
//! pulls from the ring at its own pace.

use super::{Frame, Hub};
use crate::event::Event;
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Debug)]
pub struct LocalHub {
    /// Bounded ring: a receiver more than `capacity` frames behind loses the
    /// oldest and is told so (and then closed as a slow consumer).
    tx: broadcast::Sender<Arc<Frame>>,
}

impl LocalHub {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self { tx }
    }
}

impl Hub for LocalHub {
    fn publish(&self, events: &[Arc<Event>]) {
        for e in events {
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(Frame::new(e.clone()));
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_in_order() {
        let hub = LocalHub::new(16);
        let mut rx = hub.subscribe();
        let evs: Vec<_> =
            (1..=3).map(|s| Arc::new(Event::new(s, "x", crate::event::now_ms(), None, None, "{}"))).collect();
        hub.publish(&evs);
        for s in 1..=3 {
            assert_eq!(rx.recv().await.unwrap().event.seq, s);
        }
    }
}
