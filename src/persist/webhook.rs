//! POSTs batches to a URL (to be completed).
use super::{Batch, PersistCallback, PersistError};
use async_trait::async_trait;
use std::time::Duration;

#[derive(Clone)]
pub struct WebhookOptions {
    pub url: String,
    pub timeout: Duration,
    pub max_retries: u32,
    pub backoff: Duration,
}

pub struct WebhookPlugin {
    opts: WebhookOptions,
}

impl WebhookPlugin {
    pub fn new(opts: WebhookOptions) -> Result<Self, PersistError> {
        Ok(Self { opts })
    }
}

#[async_trait]
impl PersistCallback for WebhookPlugin {
    fn name(&self) -> &'static str {
        "webhook"
    }
    async fn persist(&self, _batch: &Batch) -> Result<(), PersistError> {
        let _ = &self.opts;
        Err(PersistError::unavailable("webhook", "not implemented yet"))
    }
}
