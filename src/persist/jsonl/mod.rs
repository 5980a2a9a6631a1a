//! Append-only JSON-lines store: one event per line, exactly its wire JSON
//! (`Event::json`) and a `\n`, so the file is readable with `jq`, `tail -f` or
//! any log shipper.
//!
//! # Files
//! - `<path>`: the active file. Each batch is appended with one write and
//!   made durable with one `fdatasync` before `persist` returns.
//! - `<path>.1` ... `<path>.N`: rotated files, newest first. Before a batch
//!   would take the active file past `max_bytes`, the files shift by one and
//!   the oldest beyond `max_files` is deleted.
//! - `<path>.state.json`: the [`DurableStats`] after the last stored batch,
//!   replaced atomically (temp file + rename) after each batch. It is not
//!   fsynced: events are the record, the state is a snapshot that the next
//!   batch rewrites in full, and [`recover`](JsonlPlugin::recover) notices
//!   when it lags behind the events.
//!
//! # Crash safety
//! A crash mid-write leaves a torn last line, which `recover` cuts off (those
//! events were never acknowledged). A crash between the fsync and the state
//! write leaves the state one batch behind: seqs continue above the file's
//! highest, and the counters of that batch are lost (logged as a warning),
//! since re-applying them would need the counter rules.
//!
//! Dedupe relies on the pipeline's window of recent ids; queries are served
//! by the in-memory activity ring, which `recover` refills from the files.
//!
//! # Retention
//! Retention removes whole rotated files, oldest first, never the active
//! file: a file goes when its newest event is older than `retention_max_age`
//! (its modification time), or while the files together hold more than
//! `retention_max_events` events or `retention_max_bytes` bytes. So a jsonl
//! store keeps at most the limits, and up to one rotated file
//! (`jsonl_max_bytes`) less. Event counts of rotated files are counted once
//! and remembered (rotated files never change).
//!
//! # Export and import
//! Export reads the rotated files oldest first, then the active file, on a
//! blocking thread that hands events over a bounded channel. Import appends
//! (the files are append-only), so it takes only seqs above the highest
//! stored one.
//!
//! # Layout
//! This file holds the plugin, its options and the core trait; beside it:
//! [`files`] (file names and small file-system steps), [`state`] (the state
//! file), [`writer`] (appends and rotation), [`recovery`], [`retention`] and
//! [`transfer`] (export and import).

mod files;
mod recovery;
mod retention;
mod state;
mod transfer;
mod writer;

use self::files::folder_of;
use self::recovery::recover_blocking;
use self::writer::{persist_blocking, Writer};
use super::{Batch, PersistCallback, PersistError, Recovered, Retain, Transfer, RECOVERY_HEADROOM};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

const NAME: &str = "jsonl";

/// How the `jsonl` plugin is set up (from `[persist] jsonl_*`).
#[derive(Debug, Clone)]
pub struct JsonlOptions {
    /// The active file; rotated files and the state file sit next to it.
    pub path: PathBuf,
    /// Rotate before a batch would take the active file past this size. A
    /// single batch larger than this still goes into one (fresh) file.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest ... `path.N` oldest); 0 keeps none.
    pub max_files: u32,
    /// Newest events handed back by `recover` to refill the activity ring.
    pub recent: usize,
}

/// The JSON-lines plugin. Blocking file I/O runs on tokio's blocking pool;
/// the pipeline never overlaps `persist` calls, and the writer mutex keeps
/// `close` and a late `persist` from interleaving.
#[derive(Debug)]
pub struct JsonlPlugin {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: JsonlOptions,
    /// A `parking_lot` mutex, not a tokio one: it is only ever locked inside
    /// `spawn_blocking`, never across an `.await`.
    writer: Mutex<Writer>,
    /// The highest seq in a file retention removed.
    floor: AtomicU64,
    /// The last append failed (a full disk); health then waits for headroom.
    write_failed: AtomicBool,
    /// Events per rotated file, by (size, modification time): rotated files
    /// never change, and renames keep both.
    counts: Mutex<HashMap<(u64, SystemTime), u64>>,
}

fn err(e: impl std::fmt::Display) -> PersistError {
    PersistError::unavailable(NAME, e)
}

impl JsonlPlugin {
    pub fn new(opts: JsonlOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                opts,
                writer: Mutex::new(Writer::default()),
                floor: AtomicU64::new(0),
                write_failed: AtomicBool::new(false),
                counts: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Runs `f` with the options and the locked writer on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&JsonlOptions, &mut Writer) -> Result<T, PersistError> + Send + 'static,
    ) -> Result<T, PersistError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = inner.writer.lock();
            f(&inner.opts, &mut writer)
        })
        .await
        .map_err(|e| err(format!("file task failed: {e}")))?
    }
}

#[async_trait]
impl PersistCallback for JsonlPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn recover(&self) -> Result<Recovered, PersistError> {
        self.blocking(recover_blocking).await
    }

    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        let batch = batch.clone();
        let result = self.blocking(move |opts, w| persist_blocking(opts, w, &batch)).await;
        self.inner.write_failed.store(result.is_err(), Ordering::SeqCst);
        result
    }

    /// Opens the active file for append (creating it when missing), which
    /// fails when the folder is gone or not writable; after a failed append
    /// also waits for [`RECOVERY_HEADROOM`] free bytes (a full disk), so
    /// readiness returns by itself once there is room. Does not take the
    /// writer lock, so `/readyz` answers even while a batch is being synced.
    async fn health(&self) -> Result<(), PersistError> {
        let path = self.inner.opts.path.clone();
        let failed = self.inner.write_failed.load(Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            if failed {
                let free = crate::retention::free_bytes(folder_of(&path));
                if let Some(f) = free.filter(|&f| f < RECOVERY_HEADROOM) {
                    return Err(err(format!(
                        "the last append failed and the disk has {f} bytes free (waiting for {RECOVERY_HEADROOM})"
                    )));
                }
            }
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map(drop)
                .map_err(|e| err(format!("cannot open {} for append: {e}", path.display())))
        })
        .await
        .map_err(|e| err(format!("file task failed: {e}")))?
    }

    async fn close(&self) -> Result<(), PersistError> {
        self.blocking(|opts, w| match w.file.take() {
            Some(file) => file.sync_data().map_err(|e| err(format!("cannot sync {}: {e}", opts.path.display()))),
            None => Ok(()),
        })
        .await
    }

    fn as_retention(&self) -> Option<&dyn Retain> {
        Some(self)
    }

    fn as_transfer(&self) -> Option<&dyn Transfer> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::files::{rotated, rotated_files, state_path, with_suffix};
    use super::state::write_state;
    use super::*;
    use crate::event::Event;
    use crate::retention::Retention;
    use crate::stats::DurableStats;
    use chrono::{TimeZone, Utc};
    use futures::StreamExt;
    use std::fs;
    use std::io::Write;
    use std::path::Path;

    fn event(seq: u64) -> Arc<Event> {
        let ts = Utc.timestamp_millis_opt(1_767_211_200_000).unwrap();
        Arc::new(Event::new(seq, "x", ts, Some(&format!("id-{seq}")), None, "{\"a\":1}"))
    }

    fn batch(seqs: &[u64]) -> Batch {
        let last = seqs.iter().copied().max().unwrap_or(0);
        Batch {
            events: seqs.iter().map(|&s| event(s)).collect(),
            stats: Arc::new(DurableStats { last_seq: last, events_total: last, ..Default::default() }),
        }
    }

    fn plugin(path: &Path, max_bytes: u64, max_files: u32, recent: usize) -> JsonlPlugin {
        JsonlPlugin::new(JsonlOptions { path: path.to_path_buf(), max_bytes, max_files, recent })
    }

    fn line_len() -> u64 {
        event(1).json.len() as u64 + 1
    }

    /// The seqs of the events in a file, in file order.
    fn seqs_in(path: &Path) -> Vec<u64> {
        let text = fs::read(path).unwrap();
        text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| Event::from_json(l).unwrap().seq).collect()
    }

    fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn appends_exact_lines_and_state_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/events.jsonl");
        let p = plugin(&path, 1 << 20, 3, 10);
        let r = p.recover().await.unwrap();
        assert_eq!((r.last_seq, r.stats, r.recent.len()), (0, None, 0));
        p.health().await.unwrap();
        p.persist(&batch(&[1, 2])).await.unwrap();
        p.persist(&batch(&[3])).await.unwrap();
        p.close().await.unwrap();

        let mut expected = Vec::new();
        for s in 1..=3 {
            expected.extend_from_slice(&event(s).json);
            expected.push(b'\n');
        }
        assert_eq!(fs::read(&path).unwrap(), expected);
        let state: DurableStats = serde_json::from_slice(&fs::read(state_path(&path)).unwrap()).unwrap();
        assert_eq!(state, *batch(&[3]).stats);

        let r = plugin(&path, 1 << 20, 3, 10).recover().await.unwrap();
        assert_eq!(r.last_seq, 3);
        assert_eq!(r.stats.unwrap().events_total, 3);
        assert_eq!(seqs(&r.recent), vec![1, 2, 3]);
        assert_eq!(*r.recent[2], *event(3));

        let r = plugin(&path, 1 << 20, 3, 2).recover().await.unwrap();
        assert_eq!(seqs(&r.recent), vec![2, 3], "the newest `recent`, oldest first");
    }

    #[tokio::test]
    async fn torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, 1 << 20, 3, 10);
        p.recover().await.unwrap();
        p.persist(&batch(&[1, 2])).await.unwrap();
        p.close().await.unwrap();
        let good = fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"type":"x","data":{"a"#).unwrap();
        drop(f);

        let p = plugin(&path, 1 << 20, 3, 10);
        let r = p.recover().await.unwrap();
        assert_eq!(r.last_seq, 2);
        assert_eq!(seqs(&r.recent), vec![1, 2]);
        assert_eq!(fs::metadata(&path).unwrap().len(), good);
        p.persist(&batch(&[3])).await.unwrap();
        assert_eq!(seqs_in(&path), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn lagging_state_raises_last_seq_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, 1 << 20, 3, 10);
        p.recover().await.unwrap();
        p.persist(&batch(&[1, 2])).await.unwrap();
        p.persist(&batch(&[3, 4, 5])).await.unwrap();
        p.close().await.unwrap();
        // As if the process died between the fsync and the state write.
        write_state(&path, &batch(&[1, 2]).stats).unwrap();

        let r = plugin(&path, 1 << 20, 3, 10).recover().await.unwrap();
        assert_eq!(r.last_seq, 5);
        let stats = r.stats.unwrap();
        assert_eq!((stats.last_seq, stats.events_total), (5, 2), "seq follows the file, counters lag");
    }

    #[tokio::test]
    async fn missing_or_broken_state_starts_stats_from_zero_but_keeps_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, 1 << 20, 3, 10);
        p.recover().await.unwrap();
        p.persist(&batch(&[1, 2])).await.unwrap();
        p.close().await.unwrap();
        fs::write(state_path(&path), b"").unwrap();
        fs::write(with_suffix(&state_path(&path), ".tmp"), b"{half").unwrap();

        let r = plugin(&path, 1 << 20, 3, 10).recover().await.unwrap();
        assert_eq!((r.last_seq, r.stats), (2, None));
        assert!(!with_suffix(&state_path(&path), ".tmp").exists());
    }

    #[tokio::test]
    async fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // Two lines fit, the third rotates.
        let p = plugin(&path, 2 * line_len() + 1, 2, 10);
        p.recover().await.unwrap();
        for s in 1..=7 {
            p.persist(&batch(&[s])).await.unwrap();
        }
        p.close().await.unwrap();
        assert_eq!(seqs_in(&path), vec![7]);
        assert_eq!(seqs_in(&rotated(&path, 1)), vec![5, 6]);
        assert_eq!(seqs_in(&rotated(&path, 2)), vec![3, 4]);
        assert!(!rotated(&path, 3).exists(), "the oldest beyond max_files is deleted");

        // The ring is refilled across files, oldest first.
        let r = plugin(&path, 2 * line_len() + 1, 2, 4).recover().await.unwrap();
        assert_eq!(seqs(&r.recent), vec![4, 5, 6, 7]);
        assert_eq!(r.last_seq, 7);
    }

    #[tokio::test]
    async fn a_batch_larger_than_max_bytes_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, line_len(), 5, 10);
        p.recover().await.unwrap();
        p.persist(&batch(&[1, 2, 3])).await.unwrap();
        p.persist(&batch(&[4])).await.unwrap();
        assert_eq!(seqs_in(&rotated(&path, 1)), vec![1, 2, 3]);
        assert_eq!(seqs_in(&path), vec![4]);
    }

    #[tokio::test]
    async fn last_seq_comes_from_the_rotated_file_when_the_active_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, 2 * line_len() + 1, 2, 0);
        p.recover().await.unwrap();
        for s in 1..=3 {
            p.persist(&batch(&[s])).await.unwrap();
        }
        p.close().await.unwrap();
        fs::write(&path, b"").unwrap();
        fs::remove_file(state_path(&path)).unwrap();

        let r = plugin(&path, 2 * line_len() + 1, 2, 0).recover().await.unwrap();
        assert_eq!(r.last_seq, 2);
        assert!(r.recent.is_empty());
    }

    #[tokio::test]
    async fn max_files_zero_keeps_no_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, 2 * line_len() + 1, 0, 10);
        p.recover().await.unwrap();
        for s in 1..=3 {
            p.persist(&batch(&[s])).await.unwrap();
        }
        assert_eq!(seqs_in(&path), vec![3]);
        assert!(!rotated(&path, 1).exists());
    }

    #[tokio::test]
    async fn a_batch_offered_again_is_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, 1 << 20, 3, 10);
        p.recover().await.unwrap();
        p.persist(&batch(&[1, 2])).await.unwrap();
        p.persist(&batch(&[1, 2])).await.unwrap();
        p.persist(&batch(&[2, 3])).await.unwrap();
        assert_eq!(seqs_in(&path), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn bad_and_repeated_lines_are_skipped_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut text = Vec::new();
        for s in [1, 2, 2, 3] {
            text.extend_from_slice(&event(s).json);
            text.push(b'\n');
            if s == 1 {
                text.extend_from_slice(b"not json\n\n");
            }
        }
        fs::write(&path, &text).unwrap();
        let r = plugin(&path, 1 << 20, 3, 10).recover().await.unwrap();
        assert_eq!(seqs(&r.recent), vec![1, 2, 3]);
        assert_eq!(r.last_seq, 3);
        assert_eq!(fs::read(&path).unwrap(), text, "complete lines are left alone");
    }

    #[tokio::test]
    async fn persist_works_without_recover_and_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, 1 << 20, 3, 10);
        p.persist(&batch(&[1])).await.unwrap();
        p.close().await.unwrap();
        p.persist(&batch(&[2])).await.unwrap();
        assert_eq!(seqs_in(&path), vec![1, 2]);
    }

    #[tokio::test]
    async fn retention_removes_whole_rotated_files_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // Two lines per file.
        let p = plugin(&path, 2 * line_len() + 1, 10, 10);
        p.recover().await.unwrap();
        for s in 1..=9 {
            p.persist(&batch(&[s])).await.unwrap();
        }
        // Files: .4 [1,2] .3 [3,4] .2 [5,6] .1 [7,8] active [9]
        let now = Utc::now();
        let by_count = Retention { max_events: Some(4), ..Default::default() };
        let mut deleted = 0;
        loop {
            let step = p.enforce_retention(&by_count, now, 1000).await.unwrap();
            deleted += step.deleted;
            if step.deleted == 0 {
                break;
            }
        }
        // At most 4 kept, by whole files: [7,8] and [9] stay.
        assert_eq!(deleted, 6);
        assert_eq!(p.retention_floor(), 6);
        assert!(!rotated(&path, 2).exists() && rotated(&path, 1).exists());
        let all: Vec<u64> = p.read_after(0).unwrap().map(|e| e.unwrap().seq).collect().await;
        assert_eq!(all, vec![7, 8, 9]);

        // Age: a rotated file whose newest event is older than the limit goes.
        let by_age = Retention { max_age: Some(std::time::Duration::from_secs(60)), ..Default::default() };
        assert_eq!(p.enforce_retention(&by_age, now, 1000).await.unwrap().deleted, 0);
        let later = now + chrono::Duration::minutes(5);
        assert_eq!(p.enforce_retention(&by_age, later, 1000).await.unwrap().deleted, 2);
        // Never the active file.
        assert_eq!(p.enforce_retention(&by_age, later, 1000).await.unwrap().deleted, 0);
        assert_eq!(seqs_in(&path), vec![9]);

        let by_bytes = Retention { max_bytes: Some(1), ..Default::default() };
        for s in 10..=12 {
            p.persist(&batch(&[s])).await.unwrap();
        }
        while p.enforce_retention(&by_bytes, now, 1000).await.unwrap().deleted > 0 {}
        assert!(rotated_files(&path).is_empty());
        let usage = p.usage().await.unwrap().unwrap();
        assert_eq!(usage.bytes, fs::metadata(&path).unwrap().len());
    }

    #[tokio::test]
    async fn import_appends_only_above_the_stored_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let p = plugin(&path, 1 << 20, 3, 10);
        p.recover().await.unwrap();
        p.import(&batch(&[3, 4])).await.unwrap();
        let e = p.import(&batch(&[4, 5])).await.unwrap_err();
        assert!(matches!(e, PersistError::Conflict { .. }), "{e}");
        p.import(&batch(&[7])).await.unwrap();
        assert_eq!(seqs_in(&path), vec![3, 4, 7]);
        let after: Vec<u64> = p.read_after(3).unwrap().map(|e| e.unwrap().seq).collect().await;
        assert_eq!(after, vec![4, 7]);
    }

    #[tokio::test]
    async fn health_fails_when_the_folder_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("data");
        let path = folder.join("events.jsonl");
        let p = plugin(&path, 1 << 20, 3, 10);
        p.recover().await.unwrap();
        p.health().await.unwrap();
        p.close().await.unwrap();
        fs::remove_dir_all(&folder).unwrap();
        let e = p.health().await.unwrap_err();
        assert!(matches!(e, PersistError::Unavailable { plugin: "jsonl", .. }), "{e}");
        assert!(p.persist(&batch(&[1])).await.is_err());
    }
}
