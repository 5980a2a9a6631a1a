//! Rate-limited logging of warnings that can repeat without bound.
//!
//! A full disk fails every ingest request, a client can send invalid
//! WebSocket messages as fast as it likes, and `accept` fails on every call
//! while the process is out of file descriptors. Logging each occurrence
//! turns one problem into thousands of identical lines per second that bury
//! everything else (and can fill the very disk that is already full).
//!
//! [`LogThrottle`] lets the first occurrence of each [`Repeated`] kind through
//! in full, then at most one line per window (10 s by default) for that kind:
//! either the next occurrence after the window, carrying the number left out
//! since the previous line, or, when the occurrences stop, a summary line from
//! [`LogThrottle::flush`] (called every second by the server) with the count.
//! The counters that go with each kind are incremented at every occurrence by
//! the caller, so metrics stay exact while the log stays readable.
//!
//! The clock is a parameter of [`LogThrottle::hit_at`] and
//! [`LogThrottle::due_at`], so tests drive time by hand.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// The warnings that are rate-limited, one budget each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repeated {
    /// The persist plugin failed to store a batch (or to look up ids).
    PersistFailed,
    /// `accept` on the public listener failed (EMFILE and friends).
    AcceptFailed,
    /// A config reload failed (unreadable or invalid file).
    ReloadFailed,
    /// A dashboard client sent something that is not a valid message, on any
    /// connection: a misbehaving client fleet counts as one source.
    InvalidWsMessage,
}

impl Repeated {
    const ALL: [Repeated; 4] =
        [Repeated::PersistFailed, Repeated::AcceptFailed, Repeated::ReloadFailed, Repeated::InvalidWsMessage];

    fn index(self) -> usize {
        self as usize
    }

    /// What happened, as the summary line says it.
    pub fn what(self) -> &'static str {
        match self {
            Repeated::PersistFailed => "persist failed",
            Repeated::AcceptFailed => "accept failed",
            Repeated::ReloadFailed => "config reload failed",
            Repeated::InvalidWsMessage => "ignored an invalid client message",
        }
    }
}

/// How often each kind may log: the default window is 10 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    /// When the last line of this kind was written; `None` before the first.
    last_line: Option<Instant>,
    /// Occurrences since that line that were not logged.
    suppressed: u64,
}

/// Decides, per [`Repeated`] kind, which occurrences are logged. Cheap: one
/// short lock, no allocation.
#[derive(Debug)]
pub struct LogThrottle {
    window: Duration,
    budgets: Mutex<[Budget; Repeated::ALL.len()]>,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW)
    }
}

impl LogThrottle {
    pub fn new(window: Duration) -> Self {
        Self { window, budgets: Mutex::new([Budget::default(); Repeated::ALL.len()]) }
    }

    /// Records one occurrence. `Some(n)`: log this one, and say that `n`
    /// earlier ones were left out since the previous line (0 for the first
    /// ever). `None`: stay quiet; it is counted for the next line.
    pub fn hit(&self, kind: Repeated) -> Option<u64> {
        self.hit_at(kind, Instant::now())
    }

    /// [`Self::hit`] at a given time.
    pub fn hit_at(&self, kind: Repeated, now: Instant) -> Option<u64> {
        let mut budgets = self.budgets.lock();
        let b = &mut budgets[kind.index()];
        match b.last_line {
            Some(last) if now.duration_since(last) < self.window => {
                b.suppressed += 1;
                None
            }
            _ => {
                let left_out = std::mem::take(&mut b.suppressed);
                b.last_line = Some(now);
                Some(left_out)
            }
        }
    }

    /// The kinds whose left-out occurrences are due for a summary line (their
    /// window has passed), with the count; resets them. The caller logs.
    pub fn due(&self) -> Vec<(Repeated, u64)> {
        self.due_at(Instant::now())
    }

    /// [`Self::due`] at a given time.
    pub fn due_at(&self, now: Instant) -> Vec<(Repeated, u64)> {
        self.take(now, false)
    }

    /// Left-out occurrences whose window has passed (or all of them, with
    /// `all`), reset as reported.
    fn take(&self, now: Instant, all: bool) -> Vec<(Repeated, u64)> {
        let mut budgets = self.budgets.lock();
        let mut out = Vec::new();
        for kind in Repeated::ALL {
            let b = &mut budgets[kind.index()];
            let window_over = all || b.last_line.is_none_or(|last| now.duration_since(last) >= self.window);
            if b.suppressed > 0 && window_over {
                out.push((kind, std::mem::take(&mut b.suppressed)));
                b.last_line = Some(now);
            }
        }
        out
    }

    /// Logs a summary line for every kind that is due (see [`Self::due`]).
    pub fn flush(&self) {
        self.log(self.due());
    }

    /// Logs a summary of every left-out occurrence, due or not: at shutdown,
    /// so none goes unreported.
    pub fn flush_all(&self) {
        self.log(self.take(Instant::now(), true));
    }

    fn log(&self, summaries: Vec<(Repeated, u64)>) {
        for (kind, n) in summaries {
            tracing::warn!(
                kind = kind.what(),
                suppressed = n,
                "{}: {n} more time(s) in the last {} s (not logged one by one)",
                kind.what(),
                self.window.as_secs()
            );
        }
    }

    /// Calls [`Self::flush`] every second until the task is aborted.
    pub async fn run_flusher(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    /// A hand-driven clock.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Clock(Instant::now())
        }
        fn advance(&mut self, d: Duration) {
            self.0 += d;
        }
    }

    #[test]
    fn first_is_logged_then_one_line_per_window_with_the_count() {
        let (t, mut clock) = (LogThrottle::new(W), Clock::new());
        assert_eq!(t.hit_at(Repeated::PersistFailed, clock.0), Some(0));
        // A flood within the window: all quiet, all counted.
        for _ in 0..500 {
            assert_eq!(t.hit_at(Repeated::PersistFailed, clock.0), None);
        }
        clock.advance(Duration::from_millis(9_999));
        assert_eq!(t.hit_at(Repeated::PersistFailed, clock.0), None);
        assert!(t.due_at(clock.0).is_empty(), "the window is not over yet");
        clock.advance(Duration::from_millis(1));
        // The next occurrence after the window is logged with the count.
        assert_eq!(t.hit_at(Repeated::PersistFailed, clock.0), Some(501));
        assert_eq!(t.hit_at(Repeated::PersistFailed, clock.0), None);
    }

    #[test]
    fn a_burst_that_stops_is_summed_up_once_after_the_window() {
        let (t, mut clock) = (LogThrottle::new(W), Clock::new());
        assert_eq!(t.hit_at(Repeated::AcceptFailed, clock.0), Some(0));
        for _ in 0..42 {
            t.hit_at(Repeated::AcceptFailed, clock.0);
        }
        clock.advance(Duration::from_secs(5));
        assert!(t.due_at(clock.0).is_empty());
        clock.advance(Duration::from_secs(5));
        assert_eq!(t.due_at(clock.0), vec![(Repeated::AcceptFailed, 42)]);
        assert!(t.due_at(clock.0).is_empty(), "reported once");
        // The summary used this window's line: the next occurrence waits.
        assert_eq!(t.hit_at(Repeated::AcceptFailed, clock.0), None);
        clock.advance(W);
        assert_eq!(t.due_at(clock.0), vec![(Repeated::AcceptFailed, 1)]);
        // Quiet for a whole window: the next one is a first again.
        clock.advance(W);
        assert_eq!(t.hit_at(Repeated::AcceptFailed, clock.0), Some(0));
        // At shutdown, what is left out is reported whatever the window.
        t.hit_at(Repeated::AcceptFailed, clock.0);
        assert_eq!(t.take(clock.0, true), vec![(Repeated::AcceptFailed, 1)]);
        assert!(t.take(clock.0, true).is_empty());
    }

    #[test]
    fn kinds_have_separate_budgets() {
        let (t, mut clock) = (LogThrottle::new(W), Clock::new());
        assert_eq!(t.hit_at(Repeated::PersistFailed, clock.0), Some(0));
        assert_eq!(t.hit_at(Repeated::ReloadFailed, clock.0), Some(0));
        assert_eq!(t.hit_at(Repeated::InvalidWsMessage, clock.0), Some(0));
        assert_eq!(t.hit_at(Repeated::PersistFailed, clock.0), None);
        assert_eq!(t.hit_at(Repeated::InvalidWsMessage, clock.0), None);
        assert_eq!(t.hit_at(Repeated::InvalidWsMessage, clock.0), None);
        clock.advance(W);
        let mut due = t.due_at(clock.0);
        due.sort_by_key(|(k, _)| k.index());
        assert_eq!(due, vec![(Repeated::PersistFailed, 1), (Repeated::InvalidWsMessage, 2)]);
    }

    #[test]
    fn lines_per_window_stay_bounded_under_a_steady_flood() {
        // 100 occurrences per second for 60 s: 6 windows, so about 6 lines,
        // with the flusher looking every second as the server's does.
        let (t, mut clock) = (LogThrottle::new(W), Clock::new());
        let (mut lines, mut counted) = (0u64, 0u64);
        for i in 0..6000 {
            if let Some(left_out) = t.hit_at(Repeated::PersistFailed, clock.0) {
                lines += 1;
                counted += 1 + left_out;
            }
            if i % 100 == 0 {
                for (_, n) in t.due_at(clock.0) {
                    lines += 1;
                    counted += n;
                }
            }
            clock.advance(Duration::from_millis(10));
        }
        clock.advance(W);
        for (_, n) in t.due_at(clock.0) {
            lines += 1;
            counted += n;
        }
        assert!(lines <= 8, "{lines} lines");
        assert_eq!(counted, 6000, "every occurrence is reported exactly once");
    }
}
