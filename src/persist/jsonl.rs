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

use super::{
    Batch, EventStream, PersistCallback, PersistError, Recovered, Retain, Transfer, DEDUPE_WINDOW, RECOVERY_HEADROOM,
};
use crate::event::Event;
use crate::retention::{Retention, RetentionStep, StoreUsage};
use crate::stats::DurableStats;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

const NAME: &str = "jsonl";

/// Read buffer for the start-up scan: large enough that a scan of a big
/// file is a few thousand reads, small enough not to matter in memory.
const SCAN_BUFFER: usize = 1 << 20;

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

/// The open active file and what we know about it.
#[derive(Debug, Default)]
struct Writer {
    /// Kept open between batches (opened lazily, dropped on rotation,
    /// close, or when a failed write could not be rolled back).
    file: Option<File>,
    /// Bytes in the active file: what rotation compares with `max_bytes`.
    len: u64,
    /// Highest seq known to be durably in the files. A batch offered again
    /// after a failure (queued ack retries) skips events at or below it, so
    /// no line is ever written twice by this process.
    stored_seq: u64,
    /// Lines in the active file, once counted (for `retention_max_events`).
    active_lines: Option<u64>,
}

impl Writer {
    fn active_events(&mut self, path: &Path) -> io::Result<u64> {
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

fn err(e: impl std::fmt::Display) -> PersistError {
    PersistError::unavailable(NAME, e)
}

/// `path` with `suffix` appended to its file name (`events.jsonl` + `.1`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    with_suffix(path, &format!(".{n}"))
}

fn state_path(path: &Path) -> PathBuf {
    with_suffix(path, ".state.json")
}

/// The folder holding `path` (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a just created or renamed directory entry durable: without it a
/// power loss can forget a new file even though its data was fsynced.
fn sync_folder(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(folder_of(path))?.sync_all()?;
    }
    #[cfg(not(unix))]
    {
        let _ = path;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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

impl Writer {
    /// The active file, opened (and created) for append when not open yet.
    fn open(&mut self, path: &Path) -> Result<&mut File, PersistError> {
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

/// Replaces the state file: temp file + rename, so a reader (or a crash)
/// sees the old state or the new one, never a mix.
fn write_state(path: &Path, stats: &DurableStats) -> io::Result<()> {
    let state = state_path(path);
    let tmp = with_suffix(&state, ".tmp");
    fs::write(&tmp, serde_json::to_vec(stats)?)?;
    fs::rename(&tmp, &state)
}

/// Reads the state file. A missing file is a fresh store; an unreadable
/// one (e.g. emptied by a power loss, as it is not fsynced) is logged and
/// treated as missing: the events themselves are intact.
fn read_state(path: &Path) -> Result<Option<DurableStats>, PersistError> {
    let state = state_path(path);
    let text = match fs::read(&state) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("cannot read {}: {e}", state.display()))),
    };
    match serde_json::from_slice::<DurableStats>(&text) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            tracing::warn!(path = %state.display(), error = %e,
                "jsonl state file is unreadable; counters and totals start from zero");
            Ok(None)
        }
    }
}

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

fn recover_blocking(opts: &JsonlOptions, w: &mut Writer) -> Result<Recovered, PersistError> {
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

fn persist_blocking(opts: &JsonlOptions, w: &mut Writer, batch: &Batch) -> Result<(), PersistError> {
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

/// The rotated files that exist, oldest first (`path.N` ... `path.1`).
fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut n = 1;
    loop {
        let p = rotated(path, n);
        if !p.exists() {
            break;
        }
        out.push(p);
        n += 1;
    }
    out.reverse();
    out
}

/// Complete lines in a file (= events, but for blank or bad lines).
fn count_lines(path: &Path) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, File::open(path)?);
    let mut n = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(n);
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        reader.consume(len);
    }
}

/// The seq of the last complete line of a file (0: none readable).
fn last_seq_of(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    // An event line is at most about 64 KiB of data plus escapes and fields.
    let tail = len.min(512 * 1024);
    f.seek(SeekFrom::Start(len - tail))?;
    let mut buf = Vec::with_capacity(tail as usize);
    f.read_to_end(&mut buf)?;
    Ok(buf
        .split(|&b| b == b'\n')
        .rev()
        .filter(|l| !l.is_empty())
        .find_map(|l| Event::from_json(l).map(|e| e.seq))
        .unwrap_or(0))
}

/// The first event of a file (`None`: empty or unreadable).
fn first_event_of(path: &Path) -> Option<Event> {
    let mut reader = BufReader::new(File::open(path).ok()?);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        if let Some(e) = Event::from_json(line.strip_suffix(b"\n").unwrap_or(&line)) {
            return Some(e);
        }
    }
}

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

/// An import batch: appended as is, only above every stored seq.
fn import_blocking(opts: &JsonlOptions, w: &mut Writer, batch: &Batch) -> Result<(), PersistError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use futures::StreamExt;

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
