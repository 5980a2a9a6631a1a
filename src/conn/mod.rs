//! The front door: what every TCP connection on the public listener goes
//! through before and around HTTP.
//!
//! - **Admission** ([`Gate`]): at most `server.max_http_connections` open
//!   connections (HTTP and upgraded WebSockets alike); the next one is closed
//!   at accept and counted in `sidewire_http_rejected_connections_total`.
//!   The limit defaults to 90% of the open-file limit so the store, the
//!   metrics listener and health probes always have descriptors left.
//! - **Deadlines** ([`GuardedIo`], [`ConnState`]): a connection that starts
//!   no request within `server.idle_timeout_secs` is closed, before its first
//!   byte too (hyper's header timeout only starts once HTTP parsing does,
//!   and hyper-util's protocol sniffing waits for a first byte with no
//!   timeout at all); a request whose head has not arrived within
//!   `server.request_timeout_secs` of its first byte gets 408 and is closed.
//!   The body has the same deadline, enforced where it is read
//!   ([`RequestDeadline`], used by ingest). A response the client takes
//!   nothing of for `server.write_timeout_secs` ends the connection with a
//!   reset (the clock runs only while a write waits, so a slow reader that
//!   keeps reading is not cut). Upgraded WebSockets are exempt from all
//!   three: their heartbeat and send queue decide.
//! - **Open-file limit** ([`limit`]): raised from soft to hard at start.
//!
//! Settings are read from the live config at each accept, so a reload
//! applies to new connections.

pub mod limit;

mod io;

pub use io::GuardedIo;

use crate::config::ServerConfig;
use crate::metrics::{HttpRejectReason, Metrics, TimeoutPhase};
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// When the request being served must have arrived whole (head and body),
/// as a request extension for handlers that read a body.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub Instant);

/// The per-connection settings, taken from the config at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// No request started for this long: the connection is closed.
    pub idle: Duration,
    /// From a request's first byte to its last (head and body).
    pub request: Duration,
    /// Longest wait of a response write for the client to take something.
    pub write: Duration,
    /// Open connections beyond this are closed at accept (already resolved
    /// from `0` = automatic, and capped by the open-file limit).
    pub max_connections: usize,
}

impl Settings {
    /// The settings for `server`, given the automatic connection limit (see
    /// [`limit::auto_max_connections`]). Also says whether the configured
    /// limit was lowered to fit the open-file limit.
    pub fn from_config(server: &ServerConfig, auto_max: usize) -> (Settings, bool) {
        let configured = server.max_http_connections;
        let clamped = configured > auto_max;
        let max_connections = if configured == 0 || clamped { auto_max } else { configured };
        let settings = Settings {
            idle: Duration::from_secs(server.idle_timeout_secs),
            request: Duration::from_secs(server.request_timeout_secs),
            write: Duration::from_secs(server.write_timeout_secs),
            max_connections,
        };
        (settings, clamped)
    }
}

/// Admission to the public listener: counts open connections and refuses
/// those beyond the limit.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Open connections on the public listener; the accept loop is the only
    /// place that increments it, so check-then-increment cannot overshoot.
    open: IntGauge,
    limit: IntGauge,
    at_capacity: IntCounter,
    idle_timeouts: IntCounter,
    head_timeouts: IntCounter,
    write_timeouts: IntCounter,
}

impl Gate {
    pub fn new(metrics: &Metrics) -> Gate {
        Gate {
            open: metrics.http_open_connections.clone(),
            limit: metrics.http_max_connections.clone(),
            at_capacity: metrics
                .http_rejected_connections_total
                .with_label_values(&[HttpRejectReason::AtCapacity.label()]),
            idle_timeouts: metrics.http_timeouts_total.with_label_values(&[TimeoutPhase::Idle.label()]),
            head_timeouts: metrics.http_timeouts_total.with_label_values(&[TimeoutPhase::RequestHead.label()]),
            write_timeouts: metrics.http_timeouts_total.with_label_values(&[TimeoutPhase::ResponseWrite.label()]),
        }
    }

    /// A slot for one more connection, or `None` (counted) at the limit.
    pub fn admit(&self, settings: &Settings) -> Option<Slot> {
        self.limit.set(settings.max_connections as i64);
        if self.open.get() >= settings.max_connections as i64 {
            self.at_capacity.inc();
            return None;
        }
        self.open.inc();
        Some(Slot { open: self.open.clone() })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.get().max(0) as usize
    }

    /// The shared state of a new connection with these settings.
    pub fn conn_state(&self, settings: &Settings) -> Arc<ConnState> {
        Arc::new(ConnState {
            idle: settings.idle,
            request: settings.request,
            write: settings.write,
            phase: Mutex::new(PhaseState { phase: Phase::Idle, since: Instant::now(), reader: None }),
            idle_timeouts: self.idle_timeouts.clone(),
            head_timeouts: self.head_timeouts.clone(),
            write_timeouts: self.write_timeouts.clone(),
        })
    }
}

/// One admitted connection; dropping it (when the socket closes, also after
/// a WebSocket upgrade) frees the place.
#[derive(Debug)]
pub struct Slot {
    open: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Where a connection is in its request cycle; decides which read deadline
/// runs. (The write deadline runs in every phase but `Upgraded`, whenever a
/// write waits for the client.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the first byte of the next request (or of the first one):
    /// the idle timeout runs from the instant stored with it.
    Idle,
    /// Bytes of a request head have arrived, the head is not complete: the
    /// request timeout runs from the first byte.
    Head,
    /// A request is being served (its body read, its response written): no
    /// read deadline at the socket; the body's is enforced where it is read.
    Serving,
    /// Upgraded to a WebSocket: no deadline here ever again, read or write.
    Upgraded,
}

/// What the socket wrapper and the request handler share about one
/// connection. Touched a few times per request, never across an `.await`.
#[derive(Debug)]
pub struct ConnState {
    idle: Duration,
    request: Duration,
    write: Duration,
    /// The phase, when it began, and the reader to wake when it changes.
    phase: Mutex<PhaseState>,
    idle_timeouts: IntCounter,
    head_timeouts: IntCounter,
    write_timeouts: IntCounter,
}

#[derive(Debug)]
struct PhaseState {
    phase: Phase,
    since: Instant,
    /// The task waiting in a read while no deadline ran (a request being
    /// served). hyper may have polled that read before the response was out
    /// and has no reason to poll again; when the connection turns idle it
    /// must, so the idle deadline starts to run.
    reader: Option<Waker>,
}

impl ConnState {
    /// Bytes arrived: a request starts if the connection was idle.
    pub(crate) fn bytes_read(&self) {
        let mut p = self.phase.lock();
        if p.phase == Phase::Idle {
            p.phase = Phase::Head;
            p.since = Instant::now();
        }
    }

    /// The deadline running at the socket, with its phase; with none, keeps
    /// `waker` to be woken when one starts.
    pub(crate) fn deadline(&self, waker: Option<&Waker>) -> Option<(Phase, Instant)> {
        let mut p = self.phase.lock();
        match p.phase {
            Phase::Idle => Some((p.phase, p.since + self.idle)),
            Phase::Head => Some((p.phase, p.since + self.request)),
            Phase::Serving => {
                if let Some(w) = waker {
                    if !p.reader.as_ref().is_some_and(|r| r.will_wake(w)) {
                        p.reader = Some(w.clone());
                    }
                }
                None
            }
            Phase::Upgraded => None,
        }
    }

    pub(crate) fn timed_out(&self, phase: Phase) {
        match phase {
            Phase::Idle => self.idle_timeouts.inc(),
            Phase::Head => self.head_timeouts.inc(),
            Phase::Serving | Phase::Upgraded => {}
        }
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// When a write that starts waiting for the client now must have made
    /// progress; `None` once the connection is a WebSocket (exempt for good).
    pub(crate) fn write_deadline(&self) -> Option<Instant> {
        match self.phase.lock().phase {
            Phase::Upgraded => None,
            Phase::Idle | Phase::Head | Phase::Serving => Some(Instant::now() + self.write),
        }
    }

    pub(crate) fn write_timed_out(&self) {
        self.write_timeouts.inc();
    }

    /// The request's head is complete and a handler starts: returns when the
    /// whole request must have arrived, and a guard that makes the
    /// connection idle again once the response is sent (or dropped).
    pub fn begin_request(self: &Arc<Self>) -> (RequestDeadline, InService) {
        let mut p = self.phase.lock();
        // A pipelined request parsed from what was already buffered has no
        // first byte of its own: its time starts now.
        let started = if p.phase == Phase::Head { p.since } else { Instant::now() };
        if p.phase != Phase::Upgraded {
            p.phase = Phase::Serving;
            p.since = started;
        }
        (RequestDeadline(started + self.request), InService { conn: Some(self.clone()) })
    }
}

/// A request in service; see [`ConnState::begin_request`].
#[derive(Debug)]
pub struct InService {
    conn: Option<Arc<ConnState>>,
}

impl InService {
    /// The response switches protocols: the connection leaves HTTP for good.
    pub fn upgraded(mut self) {
        if let Some(conn) = self.conn.take() {
            let mut p = conn.phase.lock();
            p.phase = Phase::Upgraded;
            p.reader = None;
        }
    }
}

impl Drop for InService {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let reader = {
                let mut p = conn.phase.lock();
                if p.phase != Phase::Serving {
                    return;
                }
                p.phase = Phase::Idle;
                p.since = Instant::now();
                p.reader.take()
            };
            if let Some(w) = reader {
                w.wake();
            }
        }
    }
}

/// A response body that keeps its request [`InService`] until hyper has
/// taken the last of it, so a slow reader of a large response is not cut
/// off by the idle timeout.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _in_service: Option<InService>,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, in_service: Option<InService>) -> Self {
        Self { inner, _in_service: in_service }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(idle: u64, request: u64, max: usize) -> ServerConfig {
        ServerConfig {
            idle_timeout_secs: idle,
            request_timeout_secs: request,
            max_http_connections: max,
            ..ServerConfig::default()
        }
    }

    #[test]
    fn zero_means_automatic_and_too_many_is_lowered() {
        let (s, clamped) = Settings::from_config(&server(10, 30, 0), 900);
        assert_eq!((s.max_connections, clamped), (900, false));
        assert_eq!(
            (s.idle, s.request, s.write),
            (Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(30))
        );
        assert_eq!(Settings::from_config(&server(10, 30, 50), 900), (Settings { max_connections: 50, ..s }, false));
        assert_eq!(Settings::from_config(&server(10, 30, 5000), 900).0.max_connections, 900);
        assert!(Settings::from_config(&server(10, 30, 5000), 900).1);
    }

    #[test]
    fn the_gate_counts_slots() {
        let m = Metrics::new();
        let gate = Gate::new(&m);
        let s = Settings {
            idle: Duration::from_secs(1),
            request: Duration::from_secs(1),
            write: Duration::from_secs(1),
            max_connections: 2,
        };
        let a = gate.admit(&s).unwrap();
        let b = gate.admit(&s).unwrap();
        assert!(gate.admit(&s).is_none());
        assert_eq!(gate.open(), 2);
        drop(a);
        let _c = gate.admit(&s).unwrap();
        drop(b);
        assert_eq!(gate.open(), 1);
        assert!(m.render().contains("sidewire_http_rejected_connections_total{reason=\"at_capacity\"} 1"));
    }

    #[test]
    fn phases_pick_the_deadline() {
        let m = Metrics::new();
        let gate = Gate::new(&m);
        let s = Settings {
            idle: Duration::from_secs(10),
            request: Duration::from_secs(30),
            write: Duration::from_secs(30),
            max_connections: 2,
        };
        let conn = gate.conn_state(&s);
        let phase = |c: &ConnState| c.deadline(None).map(|(p, _)| p);
        let (p, idle_deadline) = conn.deadline(None).unwrap();
        assert_eq!(p, Phase::Idle);
        conn.bytes_read();
        let (p, head_deadline) = conn.deadline(None).unwrap();
        assert_eq!(p, Phase::Head);
        assert!(head_deadline >= idle_deadline + Duration::from_secs(20) - Duration::from_secs(1));
        conn.bytes_read(); // more of the same head: the clock keeps running
        assert_eq!(conn.deadline(None).unwrap().1, head_deadline);
        let (deadline, in_service) = conn.begin_request();
        assert_eq!(deadline.0, head_deadline, "head and body share one deadline");
        assert_eq!(conn.deadline(None), None, "no deadline at the socket while serving");
        drop(in_service);
        assert_eq!(phase(&conn), Some(Phase::Idle), "idle again once the response is out");
        assert!(conn.write_deadline().is_some(), "responses have a write deadline");
        let (_, in_service) = conn.begin_request();
        assert!(conn.write_deadline().unwrap() >= Instant::now() + Duration::from_secs(29));
        in_service.upgraded();
        assert_eq!(conn.deadline(None), None);
        assert_eq!(conn.write_deadline(), None, "a WebSocket has none");
        conn.bytes_read();
        let (_, again) = conn.begin_request();
        drop(again);
        assert_eq!(conn.deadline(None), None, "an upgraded connection stays exempt");
    }
}
