//! Export (the files oldest first, on a blocking thread) and import (appends
//! above the highest stored seq).

use super::files::{rotated_files, SCAN_BUFFER};
use super::writer::import_blocking;
use super::{err, JsonlPlugin};
use crate::event::Event;
use crate::persist::{Batch, EventStream, PersistError, Transfer};
use async_trait::async_trait;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

/// Sends every event with seq > `after`, oldest first, down `tx`; stops
/// when the receiver is gone.
fn read_files(path: &Path, after: u64, tx: &tokio::sync::mpsc::Sender<Result<Arc<Event>, PersistError>>) {
    let mut last = after;
    for file in rotated_files(path).into_iter().chain(std::iter::once(path.to_path_buf())) {
        let f = match File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(err(format!("cannot read {}: {e}", file.display()))));
                return;
            }
        };
        let mut reader = BufReader::with_capacity(SCAN_BUFFER, f);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                // A torn last line (a write in progress) is not an event yet.
                Ok(_) if line.last() != Some(&b'\n') => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(err(format!("cannot read {}: {e}", file.display()))));
                    return;
                }
            }
            // Repeats of a batch written twice are skipped, as at recovery.
            if let Some(e) = Event::from_json(&line[..line.len() - 1]).filter(|e| e.seq > last) {
                last = e.seq;
                if tx.blocking_send(Ok(Arc::new(e))).is_err() {
                    return;
                }
            }
        }
    }
}

/// The files are the very lines an export writes.
#[async_trait]
impl Transfer for JsonlPlugin {
    fn read_after(&self, after: u64) -> Result<EventStream, PersistError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let path = self.inner.opts.path.clone();
        tokio::task::spawn_blocking(move || read_files(&path, after, &tx));
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })))
    }

    async fn import(&self, batch: &Batch) -> Result<(), PersistError> {
        let batch = batch.clone();
        self.blocking(move |opts, w| import_blocking(opts, w, &batch)).await
    }
}
