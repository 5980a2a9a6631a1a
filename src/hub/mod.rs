//! The event hub: how accepted events reach every dashboard connection.
//!
//! [`local::LocalHub`] fans out inside one process. A Redis implementation
//! (several replicas sharing one stream) plugs in behind the same trait: its
//! `publish` hands frames to a publisher task and its subscriber task feeds
//! the same local fan-out.

pub mod local;

use crate::event::Event;
use std::sync::Arc;
use tokio::sync::broadcast;
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
