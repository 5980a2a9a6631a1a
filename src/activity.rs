//! Recent activity (contract section 4): from the store when the persist
//! plugin answers queries ([`PersistCallback::as_query`]), else from a
//! bounded in-memory ring of the newest `activity.buffer_size` events.

use crate::event::Event;
use crate::persist::ring::Ring;
use crate::persist::{EventQuery, PersistCallback, PersistError};
use std::sync::Arc;

/// Where activity queries are answered.
pub struct Activity {
    plugin: Arc<dyn PersistCallback>,
    /// Filled only when the plugin cannot answer queries (an unused ring
    /// allocates nothing).
    ring: Ring,
}

impl Activity {
    pub fn new(plugin: Arc<dyn PersistCallback>, buffer_size: usize) -> Self {
        Self { plugin, ring: Ring::new(buffer_size) }
    }

    /// Records committed events (only kept when served from the ring).
    pub fn record(&self, batch: &[Arc<Event>]) {
        if self.plugin.as_query().is_none() {
            self.ring.extend(batch);
        }
    }

    pub async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        match self.plugin.as_query() {
            Some(store) => store.query(q).await,
            None => Ok(self.ring.query(q)),
        }
    }
}
