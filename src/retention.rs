//! Retention (`[persist] retention_*`): how much history the store keeps.
//! The policy and its vocabulary live here (a leaf: the persist trait, the
//! config and the task all use it); the background task that enforces it is
//! [`crate::persist::retention_task`].
//!
//! The policy is a prefix rule: retention only ever removes the *oldest*
//! events (lowest seqs), so what is kept is always "every event from seq S
//! on". Activity paging and WebSocket resume therefore behave as if older
//! events never existed, and a resume from before S can say
//! `truncated: true` exactly (see [`crate::persist::Retain::retention_floor`]).
//!
//! Counters, `eventsTotal`, `eventsByType`, gauges and `lastSeq` live in the
//! durable stats, not in the events, and are never reduced by retention.

use std::time::Duration;

/// Most events one step removes. Small on purpose: on SQLite a step holds
/// the single writer, so an ingest commit may wait for one step. 250
/// events take well under a millisecond there, and with the task's pause
/// between steps ([`crate::persist::retention_task::STEP_PAUSE`]) a backlog
/// still goes at up to ~12,000 events/s (measured: 1,000-event steps cost
/// ingest p99 a few ms under load; see docs/BENCHMARKS.md).
pub const STEP_EVENTS: usize = 250;

/// The limits in force; `None` is "no limit of this kind". Any combination
/// applies: an event goes as soon as one limit says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove events stored longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many events.
    pub max_events: Option<u64>,
    /// Keep the store's size at most this (bytes on disk, as the store
    /// counts them: SQLite's used pages, jsonl's files).
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// Whether any limit is set.
    pub fn is_active(&self) -> bool {
        self.max_age.is_some() || self.max_events.is_some() || self.max_bytes.is_some()
    }
}

/// What one retention step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStep {
    /// Events removed by this step.
    pub deleted: u64,
    /// Whether more is due right away (more events over a limit, or space
    /// still to give back); the task then steps again after a short pause.
    pub more: bool,
}

/// What a store reports about its size, for the metrics gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreUsage {
    /// Bytes the store occupies on disk.
    pub bytes: u64,
    /// The size at which the store would fill its filesystem (its size plus
    /// the free space next to it), when known. `retention_max_bytes` keeps
    /// the store below its own cap; this is the limit nobody configured.
    pub limit_bytes: Option<u64>,
    /// When the oldest kept event was stored (seconds since the Unix epoch);
    /// `None` for an empty store.
    pub oldest_stored_at: Option<f64>,
}

/// Parses a humane duration: a whole number and a unit, `s`, `m`, `h`,
/// `d` or `w` (`"30d"`, `"12h"`, `"90m"`). `"off"`, `""` and `"0"` mean
/// no limit (`Ok(None)`).
pub fn parse_duration(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if t.is_empty() || t == "0" || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a duration like \"30d\", \"12h\", \"90m\" or \"off\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let total =
        n.checked_mul(secs).filter(|&s| s <= 100 * 365 * 86_400).ok_or_else(|| format!("{text:?} is too long"))?;
    Ok((total > 0).then(|| Duration::from_secs(total)))
}

/// Parses a humane byte size: a whole number with an optional unit
/// (`B`, `KB`/`MB`/`GB`/`TB` powers of 1000, `KiB`/`MiB`/`GiB`/`TiB` powers
/// of 1024; case-insensitive). `0` means no limit (`Ok(None)`).
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size like \"500MB\", \"2GiB\" or 1048576");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let total = n.checked_mul(mult).ok_or_else(|| format!("{text:?} is too large"))?;
    Ok((total > 0).then_some(total))
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a valid NUL-terminated path and `st` is written by
        // statvfs before it is read (only on success).
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        // The field types differ between platforms (u32 on some 32-bit ones).
        #[allow(clippy::unnecessary_cast)]
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration(" 12h ").unwrap(), Some(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_duration("90m").unwrap(), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("45s").unwrap(), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("2w").unwrap(), Some(Duration::from_secs(14 * 86_400)));
        for off in ["", "0", "off", "OFF", "0d"] {
            assert_eq!(parse_duration(off).unwrap(), None, "{off}");
        }
        for bad in ["30", "d", "30 days", "-1d", "1.5h", "3y", "99999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), Some(1 << 20));
        assert_eq!(parse_size("500MB").unwrap(), Some(500_000_000));
        assert_eq!(parse_size("2GiB").unwrap(), Some(2 << 30));
        assert_eq!(parse_size("10 kib").unwrap(), Some(10 << 10));
        assert_eq!(parse_size("0").unwrap(), None);
        for bad in ["", "MB", "1.5GB", "5 parsecs", "-3", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
