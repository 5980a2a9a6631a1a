//! The event hub: how stored events reach every dashboard connection of
//! this process.
//!
//! One fan-out seam for one process and for several replicas alike: a
//! stored batch reaches [`Delivery::deliver`], in seq order, and the
//! [`Hub`] hands its events to every connection. One process delivers
//! right after each commit (`pipeline::Outlet::Local`); a replica delivers
//! from the cluster's sequencer (`pipeline::Outlet::Cluster`), which first
//! orders its own commits between those of the other replicas (see
//! `crate::cluster`). The hub itself never knows which.

use crate::activity::Activity;
use crate::event::Event;
use crate::persist::Batch;
use crate::stats::Stats;
use std::sync::Arc;
use tokio::sync::{broadcast, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One event, encoded once and shared by every connection.
#[derive(Debug)]
pub struct Frame {
    pub event: Arc<Event>,
    /// The event's wire JSON, ready to go out as a text frame.
    pub text: Utf8Bytes,
}

impl Frame {
    pub fn new(event: Arc<Event>) -> Arc<Frame> {
        let text = Utf8Bytes::try_from(event.json.clone()).expect("event JSON is UTF-8");
        Arc::new(Frame { event, text })
    }
}

/// Fan-out of stored events inside this process, in seq order: one
/// bounded broadcast ring shared by all connections. Publishing is O(1)
/// whatever the number of clients; each connection task pulls from the ring
/// at its own pace.
#[derive(Debug)]
pub struct Hub {
    /// Bounded ring: a receiver more than `capacity` frames behind loses the
    /// oldest and is told so (and then closed as a slow consumer).
    tx: broadcast::Sender<Arc<Frame>>,
}

impl Hub {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self { tx }
    }

    /// Publishes stored events (in seq order). Never blocks: a subscriber
    /// that falls behind the ring learns it from its receiver.
    pub fn publish(&self, events: &[Arc<Event>]) {
        for e in events {
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(Frame::new(e.clone()));
        }
    }

    /// A new subscription that sees every event published after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.tx.subscribe()
    }
}

/// What a stored batch does on this replica once it is its turn (in seq
/// order): the stats take its durable part and count its events, the
/// activity ring (for plugins that cannot query) records it, every
/// connection gets its events, and the stats pusher hears of new gauges.
///
/// One process calls [`deliver`](Self::deliver) right after each commit;
/// several replicas call it from the cluster sequencer, which orders their
/// commits first (see `crate::cluster`).
#[derive(Clone)]
pub struct Delivery {
    pub stats: Arc<Stats>,
    pub activity: Arc<Activity>,
    pub hub: Arc<Hub>,
    /// Woken when a gauge changed (the stats pusher coalesces).
    pub gauges_changed: Arc<Notify>,
}

impl Delivery {
    pub fn deliver(&self, batch: &Batch) {
        let events = &batch.events;
        self.stats.commit((*batch.stats).clone(), events.len() as u64);
        self.activity.record(events);
        let mut gauges = false;
        let live: Vec<Arc<Event>> = events
            .iter()
            .filter(|e| {
                let g = e.is_gauge_report();
                gauges |= g;
                !g
            })
            .cloned()
            .collect();
        self.hub.publish(&live);
        if gauges {
            self.gauges_changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_events_in_order() {
        let hub = Hub::new(16);
        let mut rx = hub.subscribe();
        let evs: Vec<_> =
            (1..=3).map(|s| Arc::new(Event::new(s, "x", crate::event::now_ms(), None, None, "{}"))).collect();
        hub.publish(&evs);
        for s in 1..=3 {
            assert_eq!(rx.recv().await.unwrap().event.seq, s);
        }
    }
}
