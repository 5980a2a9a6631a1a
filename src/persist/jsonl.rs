//! Append-only JSON-lines store (to be completed).
use super::{Batch, PersistCallback, PersistError};
use async_trait::async_trait;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct JsonlOptions {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub max_files: u32,
    pub recent: usize,
}

#[derive(Debug)]
pub struct JsonlPlugin {
    opts: JsonlOptions,
}

impl JsonlPlugin {
    pub fn new(opts: JsonlOptions) -> Self {
        Self { opts }
    }
}

#[async_trait]
impl PersistCallback for JsonlPlugin {
    fn name(&self) -> &'static str {
        "jsonl"
    }
    async fn persist(&self, _batch: &Batch) -> Result<(), PersistError> {
        let _ = &self.opts;
        Err(PersistError::unavailable("jsonl", "not implemented yet"))
    }
}
