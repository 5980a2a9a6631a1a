//! Recent activity (contract section 4): from the store when the persist
//! plugin answers queries, else from a bounded in-memory ring of the newest
//! `activity.buffer_size` events.

use crate::event::Event;
use crate::persist::ring::Ring;
use crate::persist::{EventQuery, PersistCallback, PersistError};
use std::sync::Arc;

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
