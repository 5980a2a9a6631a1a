//! `sidewire export` and `sidewire import`: a store's events as NDJSON, one
//! event per line in its wire form with its `seq`, oldest first.
//!
//! Both stream: export reads the store a page at a time through
//! [`Transfer::read_after`], import writes batches of at most
//! [`IMPORT_BATCH`] events through [`Transfer::import`], so memory
//! stays constant for a history of any size. Moving a store is
//! `sidewire export --config old.toml | sidewire import --config new.toml`;
//! any plugin that implements [`Transfer`] can be on either end (SQLite,
//! jsonl and PostgreSQL); the others are refused before anything is read
//! ([`TransferError::Unsupported`]).
//!
//! Import keeps each event's seq, id and timestamp, and recomputes the
//! stats (counters with the importing config's rules, `eventsTotal`,
//! `eventsByType`, gauges, `lastSeq`) on top of what the store already
//! holds. It refuses a seq or an id the store already has, and lines out of
//! seq order, naming the line.

use crate::event::{Event, NewEvent, Rules};
use crate::persist::{Batch, PersistCallback, PersistError, Transfer};
use crate::stats::CounterRule;
use crate::stats::DurableStats;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most events in one import batch (one transaction in SQLite).
pub const IMPORT_BATCH: usize = 1_000;
/// Most bytes of event data in one import batch.
const IMPORT_BATCH_BYTES: usize = 8 << 20;
/// Longest line import reads: an event's `data` is at most 64 KiB, and its
/// JSON escapes can at most multiply that by six.
const MAX_LINE: usize = 1 << 20;

/// Why an export or import stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A line of the input is not an exported event.
    #[error("line {line}: {message}")]
    Line { line: u64, message: String },
    /// The plugin cannot be exported or imported into (it does not
    /// implement [`Transfer`]).
    #[error("the {plugin} plugin cannot {what} (the plugins that can: sqlite, jsonl, postgres)")]
    Unsupported { plugin: &'static str, what: &'static str },
    /// The store refused a batch (a seq or id it already holds).
    #[error("line {line}: {message}; {imported} event(s) before it were imported and stay (re-run with a file that starts after seq {last_seq})")]
    Conflict { line: u64, message: String, imported: u64, last_seq: u64 },
}

/// Which stored events an export writes.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Only seq > this.
    pub after_seq: u64,
    /// Only events whose timestamp is at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Only these types (any of them); empty: every type, gauge reports included.
    pub types: Vec<String>,
}

impl ExportFilter {
    fn matches(&self, e: &Event) -> bool {
        self.since.is_none_or(|t| e.timestamp >= t)
            && (self.types.is_empty() || self.types.iter().any(|t| **t == *e.kind))
    }
}

/// A one-line progress display on stderr, only when stderr is a terminal
/// (never in a pipe, a log file or CI), redrawn at most 5 times a second.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    what: &'static str,
    started: Instant,
    last_draw: Option<Instant>,
    /// For a percentage: the seq range being walked.
    range: Option<(u64, u64)>,
}

impl Progress {
    /// `what`: "exported" or "imported".
    pub fn new(what: &'static str) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            what,
            started: Instant::now(),
            last_draw: None,
            range: None,
        }
    }

    /// Never draws (tests, `--quiet`).
    pub fn hidden(what: &'static str) -> Progress {
        Progress { enabled: false, ..Progress::new(what) }
    }

    fn set_range(&mut self, from: u64, to: u64) {
        self.range = (to > from).then_some((from, to));
    }

    fn tick(&mut self, count: u64, seq: u64) {
        if !self.enabled || self.last_draw.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.last_draw = Some(Instant::now());
        self.draw(count, seq);
    }

    fn draw(&self, count: u64, seq: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let pct = match self.range {
            Some((from, to)) => format!(" {:>3}%", ((seq.saturating_sub(from)) * 100 / (to - from)).min(100)),
            None => String::new(),
        };
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[2K{pct} {count} events {} (seq {seq}, {:.0}/s)",
            self.what,
            count as f64 / secs
        );
    }

    fn finish(&self, count: u64, seq: u64) {
        if self.enabled {
            self.draw(count, seq);
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub events: u64,
    /// The highest seq written (0: none).
    pub last_seq: u64,
}

/// Writes the stored events that pass `filter` to `out`, one line each.
/// `last_seq` (from [`PersistCallback::recover`]) only drives the progress
/// percentage. A plugin without [`Transfer`] is refused before anything is
/// written.
pub async fn export(
    plugin: &dyn PersistCallback,
    filter: &ExportFilter,
    last_seq: u64,
    out: &mut impl Write,
    progress: &mut Progress,
) -> Result<ExportSummary, TransferError> {
    let store = transfer_of(plugin, "export")?;
    let floor = plugin.as_retention().map_or(0, |r| r.retention_floor());
    progress.set_range(filter.after_seq.max(floor), last_seq);
    let mut stream = store.read_after(filter.after_seq)?;
    let mut summary = ExportSummary::default();
    let mut seen = 0u64;
    while let Some(event) = stream.next().await {
        let event = event?;
        seen = event.seq;
        if filter.matches(&event) {
            out.write_all(&event.json)?;
            out.write_all(b"\n")?;
            summary.events += 1;
            summary.last_seq = event.seq;
        }
        progress.tick(summary.events, seen);
    }
    out.flush()?;
    progress.finish(summary.events, seen);
    Ok(summary)
}

/// What an import stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSummary {
    pub events: u64,
    /// The highest seq imported (0: none).
    pub last_seq: u64,
    /// The store's stats after the import.
    pub stats: DurableStats,
}

/// Reads exported events from `input` and stores them, keeping their seqs.
/// `stats` is what the store holds now (from [`PersistCallback::recover`]);
/// `rules` are the counter rules to recompute counters with. A plugin
/// without [`Transfer`] is refused before anything is read.
pub async fn import(
    plugin: &dyn PersistCallback,
    rules: &[CounterRule],
    mut stats: DurableStats,
    input: &mut impl BufRead,
    progress: &mut Progress,
) -> Result<ImportSummary, TransferError> {
    let store = transfer_of(plugin, "import")?;
    let no_reserved = Rules::default();
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut batch: Vec<Arc<Event>> = Vec::new();
    let mut batch_bytes = 0usize;
    // The first line of the pending batch, to name it in a conflict.
    let mut batch_line = 0u64;
    // Seqs are strictly increasing in acceptance order: an import appends
    // above everything the store ever handed out, never into its past (a
    // pruned range, or seqs a failed commit skipped).
    let store_last = stats.last_seq;
    let mut prev_seq = 0u64;
    let mut imported = 0u64;
    let mut imported_seq = 0u64;
    loop {
        line.clear();
        let n = std::io::Read::take(&mut *input, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.len() > MAX_LINE {
            return Err(TransferError::Line { line: line_no, message: format!("longer than {MAX_LINE} bytes") });
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (seq, new) =
            parse_line(text, &no_reserved).map_err(|message| TransferError::Line { line: line_no, message })?;
        if seq <= store_last {
            return Err(TransferError::Line {
                line: line_no,
                message: format!(
                    "seq {seq} is not above the store's last seq {store_last}; an import only adds events after \
                     everything the store has held"
                ),
            });
        }
        if seq <= prev_seq {
            return Err(TransferError::Line {
                line: line_no,
                message: format!("seq {seq} is not above the previous line's {prev_seq}; an export is in seq order"),
            });
        }
        prev_seq = seq;
        let at = stats.last_event_at.max(Some(new.timestamp)).unwrap_or(new.timestamp);
        stats.apply_at(seq, &new, rules, at);
        if batch.is_empty() {
            batch_line = line_no;
        }
        batch_bytes += new.queued_size();
        batch.push(Arc::new(Event::from_new(seq, &new)));
        if batch.len() >= IMPORT_BATCH || batch_bytes >= IMPORT_BATCH_BYTES {
            store_batch(store, &mut batch, &stats, batch_line, &mut imported, &mut imported_seq).await?;
            batch_bytes = 0;
            progress.tick(imported, imported_seq);
        }
    }
    store_batch(store, &mut batch, &stats, batch_line, &mut imported, &mut imported_seq).await?;
    progress.finish(imported, imported_seq);
    Ok(ImportSummary { events: imported, last_seq: imported_seq, stats })
}

/// The plugin's export/import side, or the error that names it.
fn transfer_of<'a>(plugin: &'a dyn PersistCallback, what: &'static str) -> Result<&'a dyn Transfer, TransferError> {
    plugin.as_transfer().ok_or(TransferError::Unsupported { plugin: plugin.name(), what })
}

async fn store_batch(
    store: &dyn Transfer,
    batch: &mut Vec<Arc<Event>>,
    stats: &DurableStats,
    batch_line: u64,
    imported: &mut u64,
    imported_seq: &mut u64,
) -> Result<(), TransferError> {
    let Some(last) = batch.last().map(|e| e.seq) else { return Ok(()) };
    let b = Batch { events: std::mem::take(batch), stats: Arc::new(stats.clone()) };
    match store.import(&b).await {
        Ok(()) => {
            *imported += b.events.len() as u64;
            *imported_seq = last;
            Ok(())
        }
        Err(PersistError::Conflict { message, .. }) => {
            Err(TransferError::Conflict { line: batch_line, message, imported: *imported, last_seq: *imported_seq })
        }
        Err(e) => Err(e.into()),
    }
}

/// One exported line: its seq and the event, validated like an ingested
/// one (gauge names are not checked against counter names: the event was
/// accepted by the store it comes from).
fn parse_line(text: &[u8], rules: &Rules) -> Result<(u64, NewEvent), String> {
    let mut value: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value.as_object_mut().ok_or("not a JSON object")?;
    let seq = match obj.remove("seq") {
        Some(v) => v.as_u64().filter(|&s| s > 0 && s <= i64::MAX as u64).ok_or("`seq` must be a positive integer")?,
        None => return Err("no `seq`: not a line of `sidewire export`".into()),
    };
    if !obj.contains_key("timestamp") {
        return Err("no `timestamp`: not a line of `sidewire export`".into());
    }
    let new = NewEvent::from_value(value, 0, rules).map_err(|e| {
        // The message names "event 0"; the caller names the line instead.
        e.message.strip_prefix("event 0: ").unwrap_or(&e.message).to_string()
    })?;
    Ok((seq, new))
}

/// Parses `--since`: an RFC 3339 time, or a duration back from now (`24h`, `7d`).
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    match crate::retention::parse_duration(text) {
        Ok(Some(d)) => chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| format!("--since {text:?} is too far back")),
        _ => {
            Err(format!("--since {text:?} is neither an RFC 3339 time (2025-12-31T20:00:00Z) nor a duration (24h, 7d)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteSync;
    use crate::persist::memory::MemoryPlugin;
    use crate::persist::sqlite::SqlitePlugin;

    #[test]
    fn lines_are_checked() {
        let r = Rules::default();
        let (seq, e) =
            parse_line(br#"{"type":"x","data":{"a":1},"timestamp":"2025-12-31T20:00:00.000Z","seq":7,"id":"i"}"#, &r)
                .unwrap();
        assert_eq!((seq, e.kind.as_str(), e.id.as_deref()), (7, "x", Some("i")));
        for (bad, why) in [
            (&br#"{"type":"x","timestamp":"2025-12-31T20:00:00Z"}"#[..], "no `seq`"),
            (br#"{"type":"x","seq":1}"#, "no `timestamp`"),
            (br#"{"type":"x","timestamp":"2025-12-31T20:00:00Z","seq":0}"#, "positive"),
            (br#"{"type":"X","timestamp":"2025-12-31T20:00:00Z","seq":1}"#, "must match"),
            (br#"[1]"#, "object"),
            (br#"{"#, "not JSON"),
        ] {
            let e = parse_line(bad, &r).unwrap_err();
            assert!(e.contains(why), "{e} lacks {why}");
        }
    }

    #[test]
    fn since_takes_a_time_or_a_duration() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T00:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_since("24h", now).unwrap().to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(parse_since("2025-12-31T21:00:00+01:00", now).unwrap().to_rfc3339(), "2025-12-31T20:00:00+00:00");
        assert!(parse_since("yesterday", now).is_err());
    }

    #[tokio::test]
    async fn import_refuses_out_of_order_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = SqlitePlugin::open(&dir.path().join("t.db"), SqliteSync::Normal).unwrap();
        p.recover().await.unwrap();
        let text = b"{\"type\":\"x\",\"timestamp\":\"2025-12-31T20:00:00Z\",\"seq\":2}\n{\"type\":\"x\",\"timestamp\":\"2025-12-31T20:00:00Z\",\"seq\":2}\n";
        let e = import(&p, &[], DurableStats::default(), &mut &text[..], &mut Progress::hidden("imported"))
            .await
            .unwrap_err();
        assert!(matches!(e, TransferError::Line { line: 2, .. }), "{e}");
    }

    #[tokio::test]
    async fn a_plugin_without_transfer_is_refused_by_name() {
        let p = MemoryPlugin::new(10);
        let mut out = Vec::new();
        let e = export(&p, &ExportFilter::default(), 0, &mut out, &mut Progress::hidden("exported")).await.unwrap_err();
        assert!(matches!(e, TransferError::Unsupported { plugin: "memory", what: "export" }), "{e}");
        assert!(e.to_string().starts_with("the memory plugin cannot export"), "{e}");
        assert!(out.is_empty());
        let line = b"{\"type\":\"x\",\"timestamp\":\"2025-12-31T20:00:00Z\",\"seq\":2}\n";
        let e = import(&p, &[], DurableStats::default(), &mut &line[..], &mut Progress::hidden("imported"))
            .await
            .unwrap_err();
        assert!(matches!(e, TransferError::Unsupported { plugin: "memory", what: "import" }), "{e}");
    }
}
