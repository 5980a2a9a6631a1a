//! Recovery at start-up: one streaming pass over the active file (cutting a
//! torn last line off), then rotated files while the activity ring and the
//! dedupe window want more events.

use super::files::{folder_of, remove_if_present, rotated, state_path, with_suffix, SCAN_BUFFER};
use super::state::read_state;
use super::writer::Writer;
use super::{err, JsonlOptions};
use crate::event::Event;
use crate::persist::{PersistError, Recovered, DEDUPE_WINDOW};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

/// What one pass over a file found.
#[derive(Debug, Default)]
struct Scan {
    /// The newest `keep` events, oldest first.
    events: VecDeque<Arc<Event>>,
    /// Highest seq in the file (0: none).
    max_seq: u64,
    /// Events with a seq above the `above` asked for.
    above: u64,
    /// Bytes up to the end of the last complete line.
    complete_len: u64,
    /// The file's size (more than `complete_len` when the last line is torn).
    file_len: u64,
    /// Complete lines that are not an event.
    bad_lines: u64,
    /// Events whose seq is not above the previous one (a batch repeated
    /// after a failed write that could not be cut back).
    repeated: u64,
}

/// Reads every line of `path` (streaming); `None` when the file is missing.
fn scan(path: &Path, keep: usize, above: u64) -> io::Result<Option<Scan>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, file);
    let mut s = Scan::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)? as u64;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            s.file_len = s.complete_len + n;
            return Ok(Some(s));
        }
        s.complete_len += n;
        let body = &line[..line.len() - 1];
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match Event::from_json(body) {
            Some(e) if e.seq > s.max_seq => {
                s.max_seq = e.seq;
                if e.seq > above {
                    s.above += 1;
                }
                if keep > 0 {
                    if s.events.len() == keep {
                        s.events.pop_front();
                    }
                    s.events.push_back(Arc::new(e));
                }
            }
            Some(_) => s.repeated += 1,
            None => s.bad_lines += 1,
        }
    }
    s.file_len = s.complete_len;
    Ok(Some(s))
}

fn report_scan(path: &Path, s: &Scan) {
    if s.bad_lines > 0 {
        tracing::warn!(path = %path.display(), lines = s.bad_lines, "jsonl lines that are not events were skipped");
    }
    if s.repeated > 0 {
        tracing::warn!(path = %path.display(), events = s.repeated, "jsonl events repeating an earlier seq were skipped");
    }
}

pub(super) fn recover_blocking(opts: &JsonlOptions, w: &mut Writer) -> Result<Recovered, PersistError> {
    let path = &opts.path;
    let folder = folder_of(path);
    fs::create_dir_all(folder).map_err(|e| err(format!("cannot create {}: {e}", folder.display())))?;
    // A temp state file is only left by a crash mid-write; the real one is intact.
    remove_if_present(&with_suffix(&state_path(path), ".tmp"))
        .map_err(|e| err(format!("cannot remove a stale state temp file: {e}")))?;
    let mut stats = read_state(path)?;
    let state_seq = stats.as_ref().map_or(0, |s| s.last_seq);

    // Keep enough events for the activity ring and the dedupe window.
    let keep = opts.recent.max(DEDUPE_WINDOW);
    let active = scan(path, keep, state_seq)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?
        .unwrap_or_default();
    report_scan(path, &active);
    if active.file_len > active.complete_len {
        let torn = active.file_len - active.complete_len;
        tracing::warn!(path = %path.display(), bytes = torn,
            "jsonl file ends in a torn line (a crash mid-write); cutting it off");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| err(format!("cannot open {} to cut a torn line: {e}", path.display())))?;
        file.set_len(active.complete_len)
            .and_then(|()| file.sync_data())
            .map_err(|e| err(format!("cannot cut the torn line of {}: {e}", path.display())))?;
    }
    let mut max_seq = active.max_seq;
    let mut above = active.above;
    let mut recent = active.events;

    // Rotated files, newest first: while the ring wants more events, or to
    // find the last seq when the active file holds none (just rotated).
    for n in 1..=opts.max_files {
        if recent.len() >= keep && max_seq > 0 {
            break;
        }
        let older_path = rotated(path, n);
        let want = keep - recent.len();
        let Some(older) = scan(&older_path, want, state_seq)
            .map_err(|e| err(format!("cannot read {}: {e}", older_path.display())))?
        else {
            break;
        };
        report_scan(&older_path, &older);
        if max_seq == 0 {
            // The newest file with events holds the batches the state may lag.
            above = older.above;
        }
        max_seq = max_seq.max(older.max_seq);
        let first_newer = recent.front().map_or(u64::MAX, |e| e.seq);
        for e in older.events.into_iter().rev().filter(|e| e.seq < first_newer) {
            recent.push_front(e);
        }
    }

    if max_seq > state_seq {
        match stats.as_mut() {
            Some(s) => {
                tracing::warn!(path = %path.display(), events = above, state_seq, last_seq = max_seq,
                    "jsonl state file lags the events (a crash before it was written); \
                     counters and totals may lag by that many events");
                // The highest seq is a fact of the file, unlike the counters.
                s.last_seq = max_seq;
            }
            None => tracing::warn!(path = %path.display(), events = above, last_seq = max_seq,
                "jsonl events found without a usable state file; counters and totals start from zero"),
        }
    }
    w.file = None;
    w.active_lines = None;
    w.stored_seq = max_seq.max(state_seq);
    w.open(path)?;
    let ids = recent.iter().filter_map(|e| e.id.as_ref().map(|id| (id.to_string(), e.seq))).collect();
    while recent.len() > opts.recent {
        recent.pop_front();
    }
    Ok(Recovered { stats, last_seq: max_seq.max(state_seq), recent: recent.into(), ids })
}
