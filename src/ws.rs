//! The dashboard WebSocket (contract section 5).
//!
//! The server upgrades the connection itself (not through warp's `Ws`) so it
//! can set tungstenite's buffer sizes: the 128 KiB default read buffer per
//! connection would dominate memory at 10,000 idle dashboards.
//!
//! Each connection is one task. It reads the hub, the client, the newest
//! `stats_update` (a shared `watch` channel) and the heartbeat timer, and
//! queues what goes out in its [`Outbox`]: a bounded queue
//! (`ws.send_queue_len`; full means the client is a slow consumer, closed
//! with 1008 — the hub and other clients never wait for it) plus one slot
//! for the newest unsent `stats_update` (latest wins). Whenever the outbox
//! holds something, the same task writes all of it and flushes once, so
//! events that arrived together leave in one write; a client whose socket
//! is full only keeps that write pending while the task goes on reading.
//!
//! Resume without gap or duplicate: the connection subscribes to the hub
//! *before* it reads the store. Events are published only after they are
//! stored, so every event with seq > afterSeq is either already in the store
//! when it is read, or published after the subscription. Live events up to
//! the last replayed seq are skipped.

use crate::config::LiveConfig;
use crate::error::{ApiError, ErrorCode};
use crate::event::format_ts;
use crate::http::ErrorResponse;
use crate::hub::Frame;
use crate::log_throttle::Repeated;
use crate::persist::EventQuery;
use crate::server::App;
use futures::{ready, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use warp::reply::Response;

pub const PATHS: [&str; 2] = ["/api/v1/ws/dashboard", "/ws/dashboard"];
/// Largest client frame or message; bigger ones close the connection with 1009.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// How long a closing handshake may wait for a client that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Buffer sizes chosen for many mostly idle connections.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// Connection bookkeeping shared by all dashboard sockets.
pub struct WsState {
    per_ip: Mutex<PerIp>,
    open: AtomicUsize,
    next_id: AtomicU64,
    /// The newest `stats_update` message; every connection watches it.
    stats_tx: watch::Sender<Utf8Bytes>,
    /// Flips to true at shutdown: every connection closes with 1001.
    shutdown_tx: watch::Sender<bool>,
}

/// Per-IP counts. An entry outlives its last connection by up to a minute
/// (its connects still count against the rate limit), so entries of
/// addresses that are gone are swept out once the map has doubled since the
/// last sweep: every address ever seen (say, through `X-Forwarded-For`)
/// never accumulates.
#[derive(Default)]
struct PerIp {
    map: HashMap<IpAddr, IpEntry>,
    sweep_at: usize,
}

impl PerIp {
    const MIN_SWEEP: usize = 1024;

    fn sweep_if_due(&mut self, now: Instant) {
        if self.map.len() < self.sweep_at.max(Self::MIN_SWEEP) {
            return;
        }
        self.map.retain(|_, e| {
            e.open > 0 || e.connects.back().is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        });
        self.sweep_at = self.map.len() * 2;
    }
}

#[derive(Default)]
struct IpEntry {
    open: usize,
    /// Accepted connects in the last minute (at most the rate limit).
    connects: VecDeque<Instant>,
}

impl WsState {
    pub fn new() -> Self {
        Self {
            per_ip: Mutex::new(PerIp::default()),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stats_tx: watch::channel(Utf8Bytes::from_static("")).0,
            shutdown_tx: watch::channel(false).0,
        }
    }

    /// Sends the newest stats to every connection.
    pub fn push_stats(&self, message: Utf8Bytes) {
        self.stats_tx.send_replace(message);
    }

    /// Asks every connection to close with 1001.
    pub fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Default for WsState {
    fn default() -> Self {
        Self::new()
    }
}

/// A `{"type","data","timestamp"}` message.
pub fn message(kind: &str, data: Value) -> Utf8Bytes {
    json!({"type": kind, "data": data, "timestamp": format_ts(&crate::event::now_ms())}).to_string().into()
}

/// The client's IP as the limits see it: IPv6 clients count per /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

fn client_ip(config: &crate::config::Config, peer: SocketAddr, headers: &http::HeaderMap) -> IpAddr {
    if config.server.trust_forwarded_for {
        if let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return ip;
        }
    }
    peer.ip()
}

/// Releases a connection's slot (per IP and global) when dropped.
struct Slot {
    app: Arc<App>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let ws = &self.app.ws;
        ws.open.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = ws.per_ip.lock();
        if let Some(e) = per_ip.map.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && e.connects.is_empty() {
                per_ip.map.remove(&self.ip);
            }
        }
    }
}

fn reject(app: &App, reason: &'static str, err: ApiError) -> Response {
    app.metrics.ws_rejected_connections_total.with_label_values(&[reason]).inc();
    tracing::debug!(reason, "websocket upgrade refused");
    err.to_response()
}

/// Checks, in the contract's order, and reserves a slot.
// The refusal is returned straight to the client; boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn admit(
    app: &Arc<App>,
    live: &LiveConfig,
    peer: SocketAddr,
    req: &http::Request<hyper::body::Incoming>,
    token: Option<&str>,
    is_upgrade: bool,
) -> Result<Slot, Response> {
    let cfg = &live.config;
    let headers = req.headers();
    if !cfg.auth.dashboard_tokens.is_empty()
        && !crate::http::token_ok(&cfg.auth.dashboard_tokens, crate::http::bearer(headers).or(token))
    {
        return Err(reject(
            app,
            "unauthorized",
            ApiError::new(ErrorCode::Unauthorized, "a dashboard token is required (?token= or Authorization: Bearer)"),
        ));
    }
    if !cfg.server.allowed_origins.is_empty() {
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !cfg.server.allowed_origins.iter().any(|o| o == origin) {
                return Err(reject(
                    app,
                    "forbidden_origin",
                    ApiError::new(
                        ErrorCode::ForbiddenOrigin,
                        format!("origin `{origin}` is not in server.allowed_origins"),
                    ),
                ));
            }
        }
    }
    // A plain GET (the dashboard page probes why an upgrade failed) gets its
    // auth/origin answer above, but takes no connection slot or rate budget.
    if !is_upgrade {
        let mut res = ApiError::new(
            ErrorCode::InvalidQuery,
            "this endpoint speaks WebSocket only (GET with Upgrade: websocket, version 13)",
        )
        .to_response_as(http::StatusCode::UPGRADE_REQUIRED);
        res.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
        return Err(res);
    }
    let ip = ip_key(client_ip(cfg, peer, headers));
    let ws = &app.ws;
    let mut per_ip = ws.per_ip.lock();
    let now = Instant::now();
    per_ip.sweep_if_due(now);
    let map = &mut per_ip.map;
    let entry = map.entry(ip).or_default();
    while entry.connects.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
        entry.connects.pop_front();
    }
    if entry.open >= cfg.ws.max_connections_per_ip {
        let n = entry.open;
        drop(per_ip);
        return Err(reject(
            app,
            "per_ip_limit",
            ApiError::new(
                ErrorCode::TooManyConnections,
                format!("{n} connections are open from your address (ws.max_connections_per_ip)"),
            ),
        ));
    }
    if entry.connects.len() >= cfg.ws.connect_rate_per_ip_per_min as usize {
        let wait = 60 - now.duration_since(entry.connects[0]).as_secs().min(59);
        drop(per_ip);
        return Err(reject(
            app,
            "rate_limit",
            ApiError::new(
                ErrorCode::TooManyConnections,
                "too many connections opened from your address in the last minute (ws.connect_rate_per_ip_per_min)",
            )
            .retry_after(Duration::from_secs(wait)),
        ));
    }
    if ws.open.load(Ordering::Acquire) >= cfg.ws.max_connections {
        drop(per_ip);
        return Err(reject(
            app,
            "at_capacity",
            ApiError::new(ErrorCode::ServerAtCapacity, "the server holds ws.max_connections dashboard connections")
                .retry_after(Duration::from_secs(5)),
        ));
    }
    entry.open += 1;
    entry.connects.push_back(now);
    ws.open.fetch_add(1, Ordering::AcqRel);
    Ok(Slot { app: app.clone(), ip })
}

/// Answers a request on a WebSocket path: refusal, or 101 and a connection task.
pub async fn upgrade(app: Arc<App>, peer: SocketAddr, mut req: http::Request<hyper::body::Incoming>) -> Response {
    let live = app.config.borrow().clone();
    let bad_query = |m: String| ApiError::new(ErrorCode::InvalidQuery, m).to_response();
    let mut token = None;
    let mut after_seq = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "token" => token = Some(v.into_owned()),
            "afterSeq" => match v.parse::<u64>() {
                Ok(n) => after_seq = Some(n),
                Err(_) => return bad_query(format!("`afterSeq` must be a non-negative integer, got {v:?}")),
            },
            _ => {}
        }
    }
    let headers = req.headers();
    let key = headers.get(http::header::SEC_WEBSOCKET_KEY).cloned().filter(|_| {
        req.method() == http::Method::GET
            && headers
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
            && headers.get(http::header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13")
    });
    let slot = match admit(&app, &live, peer, &req, token.as_deref(), key.is_some()) {
        Ok(s) => s,
        Err(res) => return res,
    };
    let Some(key) = key else { unreachable!("admit refuses requests that are not upgrades") };
    let on_upgrade = hyper::upgrade::on(&mut req);
    // A GET upgrade has no body: nothing to drain.
    drop(req);
    let app2 = app.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(socket_config())).await;
                serve(app2, socket, after_seq, slot).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut res = Response::default();
    *res.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept.parse().expect("base64 is a valid header"));
    res
}

/// Why a connection ended (the `reason` label of disconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClose,
    SlowConsumer,
    HeartbeatTimeout,
    Shutdown,
    /// The store could not answer a resume.
    ReplayFailed,
    /// A client frame over [`MAX_CLIENT_MESSAGE`].
    TooBig,
    /// The socket failed (reset, broken pipe): no close frame can go out.
    Broken,
}

impl End {
    /// The close frame the server sends for this end, if any. `ClientClose`
    /// gets a normal one: it is what flushes tungstenite's reply.
    fn close_frame(self) -> Option<(CloseCode, &'static str)> {
        match self {
            End::SlowConsumer => Some((CloseCode::Policy, "slow consumer")),
            End::HeartbeatTimeout => Some((CloseCode::Policy, "heartbeat timeout")),
            End::Shutdown => Some((CloseCode::Away, "server shutting down")),
            End::ClientClose => Some((CloseCode::Normal, "")),
            End::ReplayFailed => Some((CloseCode::Error, "replay failed")),
            End::TooBig => Some((CloseCode::Size, "message too big")),
            End::Broken => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            End::ClientClose => "client_close",
            End::SlowConsumer => "slow_consumer",
            End::HeartbeatTimeout => "heartbeat_timeout",
            End::ReplayFailed | End::TooBig | End::Broken => "error",
            End::Shutdown => "shutdown",
        }
    }
}

async fn serve(app: Arc<App>, socket: Socket, after_seq: Option<u64>, slot: Slot) {
    let metrics = &app.metrics;
    metrics.ws_connections_total.inc();
    metrics.ws_active_connections.inc();
    app.stats.active_connections.fetch_add(1, Ordering::Relaxed);
    let id = format!("c{:x}-{:08x}", app.ws.next_id.fetch_add(1, Ordering::Relaxed), rand::random::<u32>());
    // The span is entered only around log lines, not on every poll of the
    // connection (instrumenting the future cost ~2.5% of fan-out CPU).
    let span = tracing::info_span!("ws", conn = %id, ip = %slot.ip);
    let end = connection(app.clone(), socket, after_seq, id, &span).await;
    metrics.ws_active_connections.dec();
    app.stats.active_connections.fetch_sub(1, Ordering::Relaxed);
    metrics.ws_disconnects_total.with_label_values(&[end.label()]).inc();
    let _e = span.enter();
    match end {
        End::SlowConsumer => tracing::warn!("closed a slow consumer (send queue full)"),
        End::HeartbeatTimeout => tracing::info!("closed: no pong in time"),
        _ => tracing::debug!(reason = end.label(), "connection closed"),
    }
    drop(slot);
}

async fn connection(app: Arc<App>, socket: Socket, after_seq: Option<u64>, id: String, span: &tracing::Span) -> End {
    let live = app.config.borrow().clone();
    let ws_cfg = live.config.ws.clone();
    // Subscribe before anything is read from the store (see the module doc).
    let mut hub_rx = app.hub.subscribe();
    let (sink, mut stream) = socket.split();
    let mut out = Outbox::new(&app, sink, ws_cfg.send_queue_len);
    let ack = message(
        "connection_ack",
        json!({"connectionId": id, "statsIntervalSecs": live.config.stats.interval_secs,
               "lastSeq": app.stats.last_seq(), "serverVersion": crate::VERSION}),
    );
    let mut stats_rx = app.ws.stats_tx.subscribe();
    stats_rx.mark_unchanged();
    // The newest stats push, as a stream whose pending future survives the
    // loop's iterations: every connection watches the same channel, and a
    // fresh `changed()` per iteration would register with (and, when
    // dropped, deregister from) its shared waiter list for every message
    // sent, from every connection. Ends if the server's sender is gone.
    let stats_updates = futures::stream::unfold(stats_rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let text = rx.borrow_and_update().clone();
        Some((text, rx))
    })
    .fuse();
    let mut stats_updates = std::pin::pin!(stats_updates);
    out.push(Out::Text("connection_ack", ack));
    out.push(Out::Text("stats_update", message("stats_update", Value::Object(app.stats_snapshot()))));
    let mut shutdown_rx = app.ws.shutdown_tx.subscribe();
    let stall = Duration::from_secs(ws_cfg.pong_timeout_secs);
    let mut filter: Option<HashSet<String>> = None;
    // Live events with seq <= this were replayed already.
    let mut replayed_upto = 0u64;
    let mut first_live_sent: Option<u64> = None;
    let mut resumed = false;
    let mut client_messages = 0u64;
    let ping_every = Duration::from_secs(ws_cfg.ping_interval_secs);
    let mut ping_tick = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut pong_deadline: Option<tokio::time::Instant> = None;

    let end = 'conn: {
        if let Some(after) = after_seq {
            resumed = true;
            match replay(&app, &mut out, after, None, &filter, &ws_cfg, &mut shutdown_rx).await {
                Ok(upto) => replayed_upto = upto,
                Err(end) => break 'conn end,
            }
        }
        // Polled across iterations rather than rebuilt per message.
        let mut shutdown_wait = shutdown_rx.clone();
        let mut shutdown = std::pin::pin!(async move {
            let _ = shutdown_wait.wait_for(|s| *s).await;
        });
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break End::Shutdown,
                // Everything queued goes out in one write; this waits only
                // while the client's socket is full, and other branches run
                // meanwhile (a message leaves the outbox once the sink took it).
                written = out.write(), if out.has_work() => if let Err(e) = written {
                    span.in_scope(|| tracing::debug!(error = %e, "websocket write failed"));
                    break End::Broken;
                },
                msg = stream.next() => match msg {
                    None => break End::ClientClose,
                    Some(Ok(Message::Close(_))) => break End::ClientClose,
                    Some(Ok(Message::Pong(_))) => pong_deadline = None,
                    Some(Ok(Message::Ping(_))) | Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => invalid(&app, span, "a binary frame"),
                    Some(Ok(Message::Text(text))) => {
                        client_messages += 1;
                        match ClientMessage::parse(&text) {
                            Ok(ClientMessage::Ping) => {
                                if !out.push(Out::Text("pong", message("pong", json!({})))) {
                                    break End::SlowConsumer;
                                }
                            }
                            Ok(ClientMessage::Subscribe(types)) => filter = types,
                            Ok(ClientMessage::Resume(after)) if !resumed && client_messages == 1 => {
                                resumed = true;
                                match replay(&app, &mut out, after, first_live_sent, &filter, &ws_cfg, &mut shutdown_rx).await {
                                    Ok(upto) => replayed_upto = upto,
                                    Err(end) => break end,
                                }
                            }
                            Ok(ClientMessage::Resume(_)) => invalid(&app, span, "a resume that is not the first message"),
                            Err(why) => invalid(&app, span, &why),
                        }
                    }
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                        span.in_scope(|| tracing::warn!(error = %e, "client frame over 64 KiB"));
                        break End::TooBig;
                    }
                    Some(Err(e)) => {
                        span.in_scope(|| tracing::debug!(error = %e, "websocket read error"));
                        break End::Broken;
                    }
                },
                frame = hub_rx.recv() => {
                    if let Some(end) = take_frames(frame, &mut hub_rx, &mut out, &filter, replayed_upto, &mut first_live_sent) {
                        break end;
                    }
                }
                // At most one unsent stats_update: the newest.
                Some(text) = stats_updates.next() => out.stats = Some(text),
                _ = ping_tick.tick() => {
                    if pong_deadline.is_none() {
                        pong_deadline = Some(tokio::time::Instant::now() + stall);
                    }
                    if !out.push(Out::Ping) {
                        break End::SlowConsumer;
                    }
                }
                _ = async { tokio::time::sleep_until(pong_deadline.expect("guarded")).await }, if pong_deadline.is_some() => {
                    break End::HeartbeatTimeout;
                }
            }
        }
    };
    out.close(end).await;
    end
}

/// Most hub frames taken in one go (one write).
const HUB_BATCH: usize = 256;

/// Queues `first` and whatever else the hub holds already (up to
/// [`HUB_BATCH`]), so they go out in one write. `Some` ends the connection.
fn take_frames(
    first: Result<Arc<Frame>, broadcast::error::RecvError>,
    hub_rx: &mut broadcast::Receiver<Arc<Frame>>,
    out: &mut Outbox<'_>,
    filter: &Option<HashSet<String>>,
    replayed_upto: u64,
    first_live_sent: &mut Option<u64>,
) -> Option<End> {
    use broadcast::error::{RecvError, TryRecvError};
    let mut frame = first;
    for _ in 0..HUB_BATCH {
        match frame {
            Ok(f) => {
                let skip =
                    f.event.seq <= replayed_upto || filter.as_ref().is_some_and(|set| !set.contains(&*f.event.kind));
                if !skip {
                    first_live_sent.get_or_insert(f.event.seq);
                    if !out.push(Out::Event(f)) {
                        return Some(End::SlowConsumer);
                    }
                }
            }
            // The hub's ring moved past this connection: it is too slow.
            Err(RecvError::Lagged(_)) => return Some(End::SlowConsumer),
            Err(RecvError::Closed) => return Some(End::Shutdown),
        }
        frame = match hub_rx.try_recv() {
            Ok(f) => Ok(f),
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(TryRecvError::Closed) => Err(RecvError::Closed),
        };
    }
    None
}

/// Counts an invalid client message and logs it, rate-limited across all
/// connections (a fleet of misbehaving clients, or one that reconnects
/// after each message, must not flood the log either).
fn invalid(app: &App, span: &tracing::Span, what: &str) {
    app.metrics.ws_invalid_messages_total.inc();
    if let Some(suppressed) = app.metrics.repeated.hit(Repeated::InvalidWsMessage) {
        span.in_scope(|| tracing::warn!(what, suppressed, "ignored an invalid client message"));
    }
}

/// Replays stored events with seq > `after` (and < `before`, when live
/// events from `before` on went out already; newest `ws.max_replay` of them,
/// oldest first), then `resume_complete`. Returns the seq up to which later
/// live events are to be skipped as already sent or already known to the
/// client.
///
/// A replay is larger than the outbox by design: it writes whenever the
/// outbox is full, but a client that takes nothing for `ws.pong_timeout_secs`
/// is a slow consumer (the heartbeat, which cannot run meanwhile, would have
/// closed it by then), and shutdown interrupts it.
async fn replay(
    app: &App,
    out: &mut Outbox<'_>,
    after: u64,
    before: Option<u64>,
    filter: &Option<HashSet<String>>,
    ws: &crate::config::WsConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<u64, End> {
    let max = ws.max_replay;
    let stall = Duration::from_secs(ws.pong_timeout_secs);
    let q = EventQuery {
        types: filter.as_ref().map(|s| s.iter().cloned().collect()).unwrap_or_default(),
        before,
        after: Some(after),
        limit: max + 1,
        ascending: false,
    };
    // Everything up to here is stored (stats follow the store), so a live
    // event up to here that is not replayed has seq <= `after`.
    let stored = app.stats.last_seq();
    let mut events = app.activity.query(&q).await.map_err(|e| {
        tracing::warn!(error = %e, "resume replay failed");
        End::ReplayFailed
    })?;
    // Also truncated when retention removed events the client has not seen:
    // the replay then starts at the oldest kept event.
    let truncated = events.len() > max || after < app.plugin.retention_floor();
    events.truncate(max);
    events.reverse();
    let newest = events.last().map_or(0, |e| e.seq);
    // Skip live events the client has (<= `after`) or gets here, but never
    // beyond what this server had stored: a client whose `after` is ahead of
    // the server (a store that was reset, another server) must still get the
    // new events, not lose every one up to its `after`. With live events
    // already sent from `before` on, the hub only holds later ones: skip none.
    let cap = match before {
        Some(first_live) => first_live.saturating_sub(1),
        None => stored.max(newest),
    };
    let upto = newest.max(after).min(cap);
    let replayed = events.len();
    let done =
        |last: u64| message("resume_complete", json!({"replayed": replayed, "lastSeq": last, "truncated": truncated}));
    for e in events {
        push_waiting(out, Out::Event(Frame::new(e)), stall, shutdown).await?;
    }
    let last = app.stats.last_seq().max(upto);
    push_waiting(out, Out::Text("resume_complete", done(last)), stall, shutdown).await?;
    Ok(upto)
}

/// Queues `item`, writing the outbox out first while it is full (bounded by
/// `stall` per write, and by shutdown).
async fn push_waiting(
    out: &mut Outbox<'_>,
    mut item: Out,
    stall: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), End> {
    loop {
        match out.try_push(item) {
            Ok(()) => return Ok(()),
            Err(back) => item = back,
        }
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return Err(End::Shutdown),
            written = tokio::time::timeout(stall, out.write()) => match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(End::Broken),
                Err(_) => return Err(End::SlowConsumer),
            },
        }
    }
}

/// What a client may send.
#[derive(Debug, PartialEq)]
enum ClientMessage {
    /// `None`: every type.
    Subscribe(Option<HashSet<String>>),
    Ping,
    Resume(u64),
}

impl ClientMessage {
    fn parse(text: &str) -> Result<ClientMessage, String> {
        let v: Value = serde_json::from_str(text).map_err(|_| "a message that is not JSON".to_string())?;
        let obj = v.as_object().ok_or("a message that is not a JSON object")?;
        match obj.get("type").and_then(Value::as_str) {
            Some("ping") => Ok(ClientMessage::Ping),
            Some("subscribe") => {
                let types = obj.get("types").and_then(Value::as_array).ok_or("subscribe without a `types` array")?;
                let mut set = HashSet::new();
                for t in types {
                    let t = t.as_str().ok_or("subscribe with a non-string type")?;
                    if t == "*" {
                        return Ok(ClientMessage::Subscribe(None));
                    }
                    set.insert(t.to_string());
                }
                Ok(ClientMessage::Subscribe(if set.is_empty() { None } else { Some(set) }))
            }
            Some("resume") => obj
                .get("afterSeq")
                .and_then(Value::as_u64)
                .map(ClientMessage::Resume)
                .ok_or_else(|| "resume without a non-negative integer `afterSeq`".to_string()),
            Some(other) => Err(format!("unknown message type `{other}`")),
            None => Err("a message without a `type`".to_string()),
        }
    }
}

/// A message waiting in a connection's outbox.
enum Out {
    Event(Arc<Frame>),
    Text(&'static str, Utf8Bytes),
    Ping,
}

impl Out {
    fn into_message(self) -> (&'static str, Message) {
        match self {
            Out::Event(f) => ("event", Message::Text(f.text.clone())),
            Out::Text(kind, text) => (kind, Message::Text(text)),
            Out::Ping => ("ping", Message::Ping(Default::default())),
        }
    }
}

type Sink = futures::stream::SplitSink<Socket, Message>;

/// The sending side of one connection, driven by the connection's own task
/// between its other work (one task per connection, no channel between a
/// reader and a writer): a bounded queue of messages (`ws.send_queue_len`;
/// full means the client is a slow consumer), the newest unsent
/// `stats_update` (latest wins), and the socket's sending half.
struct Outbox<'a> {
    app: &'a App,
    /// `sidewire_ws_messages_sent_total{type="event"}`, looked up once.
    events_sent: prometheus::IntCounter,
    sink: Sink,
    queue: VecDeque<Out>,
    cap: usize,
    stats: Option<Utf8Bytes>,
    /// Messages were handed to the sink since its last completed flush.
    unflushed: bool,
}

impl<'a> Outbox<'a> {
    fn new(app: &'a App, sink: Sink, cap: usize) -> Self {
        let events_sent = app.metrics.ws_messages_sent_total.with_label_values(&["event"]);
        Self { app, events_sent, sink, queue: VecDeque::new(), cap: cap.max(1), stats: None, unflushed: false }
    }

    /// Queues a message; `false` when the queue is full (a slow consumer).
    fn push(&mut self, item: Out) -> bool {
        self.try_push(item).is_ok()
    }

    /// Queues a message, or hands it back when the queue is full.
    fn try_push(&mut self, item: Out) -> Result<(), Out> {
        if self.queue.len() >= self.cap {
            return Err(item);
        }
        self.queue.push_back(item);
        Ok(())
    }

    fn has_work(&self) -> bool {
        self.unflushed || self.stats.is_some() || !self.queue.is_empty()
    }

    /// Hands every waiting message to the sink (a pending `stats_update`
    /// first), then flushes once: whatever queued up while the socket was busy
    /// leaves in one write. Cancellation-safe: a message leaves the queue
    /// only when the sink has taken it, and a cut-short flush is redone.
    fn poll_write(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), WsError>> {
        // Counted per call rather than per message: the counters are shared by
        // every connection.
        let (mut events, mut messages) = (0u64, 0u64);
        let result = loop {
            if self.stats.is_none() && self.queue.is_empty() {
                break Ok(());
            }
            match self.sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => break Err(e),
                Poll::Pending => break Ok(()),
            }
            let (kind, msg) = match self.stats.take() {
                Some(text) => ("stats_update", Message::Text(text)),
                None => self.queue.pop_front().expect("checked above").into_message(),
            };
            if let Err(e) = self.sink.start_send_unpin(msg) {
                break Err(e);
            }
            self.unflushed = true;
            match kind {
                "ping" => {}
                "event" => events += 1,
                other => self.app.metrics.ws_messages_sent_total.with_label_values(&[other]).inc(),
            }
            if kind != "ping" {
                messages += 1;
            }
        };
        if events > 0 {
            self.events_sent.inc_by(events);
        }
        if messages > 0 {
            self.app.stats.messages_window.add(messages);
        }
        result?;
        if self.stats.is_some() || !self.queue.is_empty() {
            return Poll::Pending; // the sink is not ready; it woke us up when it is
        }
        if self.unflushed {
            ready!(self.sink.poll_flush_unpin(cx))?;
            self.unflushed = false;
        }
        if self.queue.capacity() > 256 {
            self.queue.shrink_to(16); // a burst's memory goes back once sent
        }
        Poll::Ready(Ok(()))
    }

    async fn write(&mut self) -> Result<(), WsError> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }

    /// Ends the connection from our side, within [`CLOSE_TIMEOUT`]: sends the
    /// close frame `end` calls for (if any) and flushes. After the client's
    /// own close, tungstenite refuses a second close frame
    /// (`SendAfterClosing`) but has queued its reply to the client's; the
    /// flush in `close()` is what sends that reply, so it runs whether or not
    /// the send succeeded. Messages still queued are not sent.
    async fn close(mut self, end: End) {
        let frame = end.close_frame();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if let Some((code, reason)) = frame {
                let _ = self.sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
            }
            let _ = self.sink.close().await;
        })
        .await;
    }
}

/// Pushes `stats_update` to every connection: every `stats.interval_secs`,
/// and within `stats.min_push_interval_ms` (at most one push per that
/// interval) after a gauge changed.
pub async fn stats_pusher(app: Arc<App>, gauges_changed: Arc<tokio::sync::Notify>) {
    let mut config = app.config.clone();
    let mut last_push = Instant::now();
    loop {
        let (interval, min_gap) = {
            let live = config.borrow_and_update();
            (
                Duration::from_secs(live.config.stats.interval_secs),
                Duration::from_millis(live.config.stats.min_push_interval_ms),
            )
        };
        let next_tick = last_push + interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick.into()) => {}
            _ = gauges_changed.notified() => {
                let earliest = last_push + min_gap;
                tokio::time::sleep_until(earliest.into()).await;
            }
            _ = config.changed() => continue,
        }
        last_push = Instant::now();
        if app.ws.open_connections() > 0 {
            app.ws.push_stats(message("stats_update", Value::Object(app.stats_snapshot())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let v4: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(v4), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn per_ip_entries_of_gone_addresses_are_swept() {
        let mut p = PerIp::default();
        let long_ago = Instant::now();
        let now = long_ago + Duration::from_secs(61);
        for i in 0..PerIp::MIN_SWEEP as u32 {
            let e = p.map.entry(IpAddr::from(i.to_be_bytes())).or_default();
            e.connects.push_back(long_ago);
        }
        p.map.entry("10.9.9.9".parse().unwrap()).or_default().open = 1; // still connected
        p.map.entry("10.9.9.8".parse().unwrap()).or_default().connects.push_back(now); // connected a moment ago
        p.sweep_if_due(now);
        assert_eq!(p.map.len(), 2, "only the live and the recent entries stay");
        assert_eq!(p.sweep_at, 4);
        p.sweep_if_due(now); // below MIN_SWEEP: nothing to do
        assert_eq!(p.map.len(), 2);
    }

    #[test]
    fn client_messages() {
        assert_eq!(ClientMessage::parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
        assert_eq!(ClientMessage::parse(r#"{"type":"subscribe","types":["*"]}"#), Ok(ClientMessage::Subscribe(None)));
        assert_eq!(ClientMessage::parse(r#"{"type":"subscribe","types":[]}"#), Ok(ClientMessage::Subscribe(None)));
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","types":["a"]}"#),
            Ok(ClientMessage::Subscribe(Some(["a".to_string()].into())))
        );
        assert_eq!(ClientMessage::parse(r#"{"type":"resume","afterSeq":5}"#), Ok(ClientMessage::Resume(5)));
        assert!(ClientMessage::parse("nope").is_err());
        assert!(ClientMessage::parse("[1,2]").is_err());
        assert!(ClientMessage::parse(r#"{"type":"x"}"#).is_err());
    }
}
