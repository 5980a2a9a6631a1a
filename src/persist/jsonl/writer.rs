//! The active file: appends (one write and one `fdatasync` per batch),
//! rotation, and what a batch or an import writes.

use super::files::{count_lines, remove_if_present, rename_if_present, rotated, state_path, sync_folder};
use super::state::write_state;
use super::{err, JsonlOptions, NAME};
use crate::event::Event;
use crate::persist::{Batch, PersistError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

/// The open active file and what we know about it.
#[derive(Debug, Default)]
pub(super) struct Writer {
    /// Kept open between batches (opened lazily, dropped on rotation,
    /// close, or when a failed write could not be rolled back).
    pub(super) file: Option<File>,
    /// Bytes in the active file: what rotation compares with `max_bytes`.
    len: u64,
    /// Highest seq known to be durably in the files. A batch offered again
    /// after a failure (queued ack retries) skips events at or below it, so
    /// no line is ever written twice by this process.
    pub(super) stored_seq: u64,
    /// Lines in the active file, once counted (for `retention_max_events`).
    pub(super) active_lines: Option<u64>,
}

impl Writer {
    pub(super) fn active_events(&mut self, path: &Path) -> io::Result<u64> {
        if let Some(n) = self.active_lines {
            return Ok(n);
        }
        let n = match count_lines(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            r => r?,
        };
        self.active_lines = Some(n);
        Ok(n)
    }
}

impl Writer {
    /// The active file, opened (and created) for append when not open yet.
    pub(super) fn open(&mut self, path: &Path) -> Result<&mut File, PersistError> {
        if self.file.is_none() {
            let existed = path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
            if !existed {
                sync_folder(path).map_err(|e| err(format!("cannot sync the folder of {}: {e}", path.display())))?;
            }
            self.len = file.metadata().map_err(|e| err(format!("cannot stat {}: {e}", path.display())))?.len();
            self.file = Some(file);
        }
        self.file.as_mut().ok_or_else(|| err("the active file is not open"))
    }

    /// Shifts `path.N-1` → `path.N` ... `path` → `path.1`, deleting what
    /// falls beyond `max_files`, then starts a fresh active file. Every step
    /// tolerates a missing file, so a rotation cut short by an error is
    /// simply redone by the next batch.
    fn rotate(&mut self, opts: &JsonlOptions) -> Result<(), PersistError> {
        // Every batch was fsynced already; dropping the handle loses nothing.
        self.file = None;
        let path = &opts.path;
        let fail = |what: &Path, e: io::Error| err(format!("cannot rotate {}: {e}", what.display()));
        if opts.max_files == 0 {
            remove_if_present(path).map_err(|e| fail(path, e))?;
        } else {
            let oldest = rotated(path, opts.max_files);
            remove_if_present(&oldest).map_err(|e| fail(&oldest, e))?;
            // Leftovers from a larger `max_files` in an earlier config.
            let mut n = opts.max_files + 1;
            loop {
                let extra = rotated(path, n);
                match fs::remove_file(&extra) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => return Err(fail(&extra, e)),
                }
            }
            for n in (1..opts.max_files).rev() {
                let from = rotated(path, n);
                rename_if_present(&from, &rotated(path, n + 1)).map_err(|e| fail(&from, e))?;
            }
            rename_if_present(path, &rotated(path, 1)).map_err(|e| fail(path, e))?;
        }
        tracing::info!(path = %path.display(), max_files = opts.max_files, "jsonl file rotated");
        self.active_lines = Some(0);
        self.open(path)?;
        Ok(())
    }

    /// Appends `bytes` with one write and fsyncs them; on failure cuts the
    /// file back so a retry does not leave half a batch in front of it.
    fn append(&mut self, opts: &JsonlOptions, bytes: &[u8]) -> Result<(), PersistError> {
        let path = &opts.path;
        self.open(path)?;
        if self.len > 0 && self.len.saturating_add(bytes.len() as u64) > opts.max_bytes {
            self.rotate(opts)?;
        }
        let before = self.len;
        let file = self.open(path)?;
        let written = file.write_all(bytes).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.len = before + bytes.len() as u64;
                if let Some(n) = self.active_lines.as_mut() {
                    *n += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
                }
                Ok(())
            }
            Err(e) => {
                let rolled_back = file.set_len(before).and_then(|()| file.sync_data());
                if let Err(re) = rolled_back {
                    tracing::warn!(path = %path.display(), error = %re,
                        "cannot cut a failed write back; a retry may repeat events (recovery skips repeats)");
                    // Reopen next time, measuring the file afresh.
                    self.file = None;
                }
                Err(err(format!("cannot append to {}: {e}", path.display())))
            }
        }
    }
}

pub(super) fn persist_blocking(opts: &JsonlOptions, w: &mut Writer, batch: &Batch) -> Result<(), PersistError> {
    let fresh: Vec<&Arc<Event>> = batch.events.iter().filter(|e| e.seq > w.stored_seq).collect();
    if let Some(last) = fresh.last() {
        let last_seq = last.seq;
        let mut bytes = Vec::with_capacity(fresh.iter().map(|e| e.json.len() + 1).sum());
        for e in &fresh {
            bytes.extend_from_slice(&e.json);
            bytes.push(b'\n');
        }
        w.append(opts, &bytes)?;
        w.stored_seq = last_seq;
    }
    // The events are durable now: a state that cannot be written only lags
    // until the next batch rewrites it in full, and `recover` copes with a
    // lagging state, so this is a warning and not a failed batch (failing
    // would make clients retry events that are already stored).
    if let Err(e) = write_state(&opts.path, &batch.stats) {
        tracing::warn!(path = %state_path(&opts.path).display(), error = %e,
            "cannot write the jsonl state file; stats after a restart may lag");
    }
    Ok(())
}

/// An import batch: appended as is, only above every stored seq.
pub(super) fn import_blocking(opts: &JsonlOptions, w: &mut Writer, batch: &Batch) -> Result<(), PersistError> {
    if let Some(first) = batch.events.first().filter(|e| e.seq <= w.stored_seq) {
        return Err(PersistError::Conflict {
            plugin: NAME,
            message: format!(
                "seq {} is not above the highest stored seq {}; a jsonl store only appends",
                first.seq, w.stored_seq
            ),
        });
    }
    persist_blocking(opts, w, batch)
}
