//! WAL checkpoints on their own thread, so no group commit pays for the copy.

use rusqlite::Connection;
use std::path::Path;

/// The checkpointer thread, owned by the writer thread: stopped (and waited
/// for) before the writer's last checkpoint at close, so the final
/// `TRUNCATE` checkpoint and the file's shrinking never race with it; stopped
/// too when the writer thread ends for any other reason.
pub(super) struct Checkpoints {
    pub(super) stop: std::sync::mpsc::Sender<()>,
    pub(super) thread: std::thread::JoinHandle<()>,
}

impl Checkpoints {
    pub(super) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// How often the checkpointer copies committed WAL pages into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The writer's own automatic checkpoint, at 1,024 WAL pages (4 MiB): a
/// backstop that bounds the WAL, not the main copy path. A WAL starts over
/// from its beginning only when a write finds every frame copied back, and
/// under sustained ingest the checkpointer thread is always a few commits
/// behind the writer, so without a backstop the WAL grew without bound (4.2
/// GB after two minutes at 90,000 events/s). When the writer checkpoints,
/// nothing is appended meanwhile, so it completes and the WAL restarts; the
/// checkpointer has copied most pages by then.
///
/// Why small: the WAL is a ring of this size, and each checkpoint first
/// fsyncs it, writing back every page dirtied since the last one. Single
/// events commit a few pages each (~135 MB/s of WAL at 20,000 requests/s),
/// so with a 32 MiB ring each fsync wrote ~32 MiB, commits stalled behind
/// that writeback, and single-event p99 was ~20 ms; with a 4 MiB ring the
/// same pages are rewritten in the page cache and each fsync writes at most
/// 4 MiB: p99 ~5.5 ms at the same throughput (docs/BENCHMARKS.md, "SQLite's
/// WAL size"). The price is more checkpoints in the writer under 100-event
/// batches (measured there too).
pub(super) const WRITER_CHECKPOINT_PAGES: u32 = 1024;

/// Copies the WAL into the database file on its own connection and thread,
/// every [`CHECKPOINT_EVERY`], with `PASSIVE` checkpoints: they never wait
/// for the writer or readers, and the writer never waits for them. With
/// SQLite's automatic checkpoint alone, the commit that crossed 1,000 WAL
/// pages did the whole copy (and its fsync) itself, and every request in that
/// group commit waited: milliseconds at the p99 of single-event ingest (see
/// [`WRITER_CHECKPOINT_PAGES`] for the backstop). Stops when `stop`
/// disconnects (the plugin is dropped).
pub(super) fn checkpointer(path: &Path, stop: std::sync::mpsc::Receiver<()>) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sqlite checkpointer cannot open the store; the WAL grows until restart");
            return;
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_millis(100));
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "sqlite checkpoint failed; retried");
        }
    }
}
