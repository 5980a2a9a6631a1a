//! The event hub: how accepted events reach every dashboard connection.
//!
//! [`local::LocalHub`] fans out inside one process. A Redis implementation
//! (several replicas sharing one stream) plugs in behind the same trait: its
//! `publish` hands frames to a publisher task and its subscriber task feeds
//! the same local fan-out.

pub mod local;

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

/// Fan-out of accepted events, in seq order.
pub trait Hub: Send + Sync + 'static {
    /// Publishes committed events (in seq order). Never blocks: a subscriber
    /// that falls behind the hub's buffer learns it from its receiver.
    fn publish(&self, events: &[Arc<Event>]);

    /// A new subscription that sees every event published after this call.
    fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>>;
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
    pub hub: Arc<dyn Hub>,
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
