//! The files on disk: their names (`<path>.N`, `<path>.state.json`), small
//! file-system steps that tolerate a missing file, and reads of a whole file
//! (line counts, first and last event).

use crate::event::Event;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Read buffer for the start-up scan: large enough that a scan of a big
/// file is a few thousand reads, small enough not to matter in memory.
pub(super) const SCAN_BUFFER: usize = 1 << 20;

/// `path` with `suffix` appended to its file name (`events.jsonl` + `.1`).
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

pub(super) fn rotated(path: &Path, n: u32) -> PathBuf {
    with_suffix(path, &format!(".{n}"))
}

pub(super) fn state_path(path: &Path) -> PathBuf {
    with_suffix(path, ".state.json")
}

/// The folder holding `path` (`.` for a bare file name).
pub(super) fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a just created or renamed directory entry durable: without it a
/// power loss can forget a new file even though its data was fsynced.
pub(super) fn sync_folder(path: &Path) -> io::Result<()> {
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

pub(super) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub(super) fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The rotated files that exist, oldest first (`path.N` ... `path.1`).
pub(super) fn rotated_files(path: &Path) -> Vec<PathBuf> {
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
pub(super) fn count_lines(path: &Path) -> io::Result<u64> {
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
pub(super) fn last_seq_of(path: &Path) -> io::Result<u64> {
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
pub(super) fn first_event_of(path: &Path) -> Option<Event> {
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
