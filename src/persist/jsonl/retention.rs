//! Retention: whole rotated files, oldest first, never the active file.

use super::files::{count_lines, first_event_of, folder_of, last_seq_of, rotated_files};
use super::writer::Writer;
use super::{err, Inner, JsonlPlugin};
use crate::persist::{PersistError, Retain};
use crate::retention::{Retention, RetentionStep, StoreUsage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

impl Inner {
    fn events_in(&self, path: &Path, meta: &fs::Metadata) -> io::Result<u64> {
        let key = (meta.len(), meta.modified()?);
        if let Some(n) = self.counts.lock().get(&key) {
            return Ok(*n);
        }
        let n = count_lines(path)?;
        let mut counts = self.counts.lock();
        if counts.len() > 4 * (self.opts.max_files as usize + 1) {
            counts.clear(); // forgotten files; recounting is cheap enough
        }
        counts.insert(key, n);
        Ok(n)
    }

    /// One retention step: removes the oldest rotated file when the policy
    /// says so. Runs with the writer lock held, so no rotation renames files
    /// under it.
    fn enforce(&self, w: &mut Writer, policy: &Retention, now: DateTime<Utc>) -> Result<RetentionStep, PersistError> {
        let path = &self.opts.path;
        let files = rotated_files(path);
        let Some(oldest) = files.first() else { return Ok(RetentionStep::default()) };
        let io = |p: &Path, e: io::Error| err(format!("retention: cannot read {}: {e}", p.display()));
        let meta = fs::metadata(oldest).map_err(|e| io(oldest, e))?;
        let mut due = policy.max_age.is_some_and(|age| {
            let modified: DateTime<Utc> = meta.modified().map(Into::into).unwrap_or(now);
            chrono::Duration::from_std(age).is_ok_and(|age| modified < now - age)
        });
        if !due && (policy.max_events.is_some() || policy.max_bytes.is_some()) {
            let (mut events, mut bytes) = (0u64, 0u64);
            for f in files.iter().chain(std::iter::once(path)) {
                let m = match fs::metadata(f) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(f, e)),
                };
                bytes += m.len();
                if policy.max_events.is_some() {
                    events += if f == path {
                        w.active_events(path).map_err(|e| io(f, e))?
                    } else {
                        self.events_in(f, &m).map_err(|e| io(f, e))?
                    };
                }
            }
            due = policy.max_events.is_some_and(|n| events > n) || policy.max_bytes.is_some_and(|n| bytes > n);
        }
        if !due {
            return Ok(RetentionStep::default());
        }
        let deleted = self.events_in(oldest, &meta).map_err(|e| io(oldest, e))?;
        let last = last_seq_of(oldest).map_err(|e| io(oldest, e))?;
        fs::remove_file(oldest).map_err(|e| err(format!("retention: cannot remove {}: {e}", oldest.display())))?;
        self.floor.fetch_max(last, Ordering::SeqCst);
        tracing::info!(path = %oldest.display(), events = deleted, last_seq = last, "retention removed a jsonl file");
        Ok(RetentionStep { deleted, more: files.len() > 1 })
    }
}

/// Whole rotated files, oldest first, never the active file.
#[async_trait]
impl Retain for JsonlPlugin {
    fn retention_floor(&self) -> u64 {
        self.inner.floor.load(Ordering::SeqCst)
    }

    async fn enforce_retention(
        &self,
        policy: &Retention,
        now: DateTime<Utc>,
        _max_events: usize,
    ) -> Result<RetentionStep, PersistError> {
        let inner = self.inner.clone();
        let policy = *policy;
        tokio::task::spawn_blocking(move || {
            if policy.max_events.is_some() {
                // Count new rotated files before taking the writer lock, so
                // ingest never waits for a count (the cache key survives the
                // renames of a rotation).
                for f in rotated_files(&inner.opts.path) {
                    if let Ok(m) = fs::metadata(&f) {
                        let _ = inner.events_in(&f, &m);
                    }
                }
            }
            let mut w = inner.writer.lock();
            inner.enforce(&mut w, &policy, now)
        })
        .await
        .map_err(|e| err(format!("file task failed: {e}")))?
    }

    async fn usage(&self) -> Result<Option<StoreUsage>, PersistError> {
        let path = self.inner.opts.path.clone();
        tokio::task::spawn_blocking(move || {
            let files: Vec<PathBuf> = rotated_files(&path).into_iter().chain(std::iter::once(path.clone())).collect();
            let bytes: u64 = files.iter().filter_map(|f| fs::metadata(f).ok()).map(|m| m.len()).sum();
            let oldest = files.iter().find_map(|f| first_event_of(f));
            let limit_bytes = crate::retention::free_bytes(folder_of(&path)).map(|f| f + bytes);
            Some(StoreUsage {
                bytes,
                limit_bytes,
                oldest_stored_at: oldest.map(|e| e.timestamp.timestamp_millis() as f64 / 1000.0),
            })
        })
        .await
        .map_err(|e| err(format!("file task failed: {e}")))
    }
}
