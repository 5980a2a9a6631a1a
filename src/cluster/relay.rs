//! The commit relay (`broadcast.backend = "redis"`): one replica at a time,
//! the *writer*, commits every replica's groups; the others forward theirs
//! to it through Redis and answer their requests with what it answers.
//!
//! Why: every commit in the cluster takes the one head lock of the store
//! (see `persist::postgres::commit`). With each replica committing its own
//! small group, N replicas make N times as many commits, each a lock
//! handover between backends that compete for the same cores; throughput
//! fell with every replica added. Through the writer, the cluster makes one
//! group commit at a time, as large as everything that waits, like one
//! process does.
//!
//! ```text
//!  replica B writer task ──RPUSH <prefix>:relay:<A>:inbox──▶ A's inbox task
//!      ▲                                                        │ one job in A's pipeline:
//!      │                                                        ▼ merged with A's own jobs,
//!      └──PUBLISH <prefix>:relay:<B>:answers (seqs, stored)── one sidewire_commit, published
//!                                                              once on the bus by A
//! ```
//!
//! - **Who writes**: the holder of the lease key `<prefix>:relay:writer`
//!   (`SET NX PX`, renewed every second, gone 3 s after its holder stops).
//!   Every replica looks the key up every second.
//! - **Correctness does not rest on the relay.** The store still numbers,
//!   dedupes and makes durable every group under its head lock, so two
//!   writers at once (a lease that changed hands), or replicas committing
//!   directly meanwhile, are only slower, never wrong.
//! - **Falls back to committing here** whenever forwarding cannot start:
//!   no writer known, Redis unreachable, this replica's answer channel not
//!   subscribed, or the writer failed to answer in the last few seconds.
//!   Ingest never depends on Redis.
//! - **A forward that started but got no answer** (the writer died, Redis
//!   went away) answers 503 `persist_unavailable`: the group may or may not
//!   be stored, exactly as when a commit's reply is lost. A client that
//!   retries with the same ids gets their original seqs. A forwarded group
//!   not answered within [`RECLAIM_AFTER`] and still in the writer's inbox
//!   is taken back (`LREM`: then the writer can never see it) and committed
//!   here; one the writer finds older than [`TAKE_WITHIN`] is dropped.
//! - The writer publishes the merged batch on the bus once; the forwarding
//!   replica delivers its own events when they arrive on the bus (or from
//!   the store's head check), like any other replica's.
//! - Counter rules and gauges are folded in by the writer, with its config:
//!   replicas of one cluster are expected to share their config.

use super::redis_bus::{connect, timed, IO_TIMEOUT};
use super::supervisor::{BACKOFF_MAX, BACKOFF_MIN};
use crate::error::{ApiError, ErrorCode};
use crate::event::NewEvent;
use crate::metrics::Metrics;
use crate::tls::redis::RedisTarget;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// The writer's lease lasts this long without renewal.
const LEASE: Duration = Duration::from_secs(3);
/// How often the lease is renewed or looked up.
const LEASE_EVERY: Duration = Duration::from_millis(1000);
/// A forwarded group not answered within this long is taken back from the
/// writer's inbox if it is still there, and committed here.
const RECLAIM_AFTER: Duration = Duration::from_millis(300);
/// A forwarded group the writer finds older than this is dropped (its
/// sender took it back or stops waiting soon).
pub const TAKE_WITHIN: Duration = Duration::from_secs(3);
/// How long a forwarding replica waits for the answer: the take, the
/// writer's queue and one commit under its deadline, and a margin.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(8);
/// After a forward got no answer, commit here for this long.
const DIRECT_AFTER_SILENCE: Duration = Duration::from_secs(5);
/// Most forwarded groups taken from the inbox at once.
const TAKE_BURST: usize = 64;
/// `Retry-After` of a forward that got no answer.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Renews the lease only while this replica holds it.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// What this replica does with its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// No writer known (or Redis unreachable): commit here.
    Unknown,
    /// This replica holds the lease: commit here, and take the others' groups.
    Writer,
    /// Forward to this writer (its instance name).
    Forward(String),
}

/// The writer's side: where forwarded groups go (the replica's pipeline).
#[async_trait]
pub trait Submit: Send + Sync + 'static {
    /// Whether the writer needs the parsed `data` of events of this type
    /// (counter rules with `add`, gauge reports).
    fn needs_data(&self, kind: &str) -> bool;

    /// Queues one forwarded group as one job and answers it once stored.
    async fn submit_forwarded(&self, events: Vec<NewEvent>) -> Result<Forwarded, ApiError>;
}

/// The writer's answer for a forwarded group, per event in its order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Forwarded {
    /// The seq stored now, or the seq a duplicate got the first time.
    pub seqs: Vec<u64>,
    /// `true` when stored now, `false` for a duplicate.
    pub stored: Vec<bool>,
}

/// One event on its way to the writer.
#[derive(serde::Serialize, serde::Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    t: std::borrow::Cow<'a, str>,
    ts: DateTime<Utc>,
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    s: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    d: &'a serde_json::value::RawValue,
}

/// A forwarded group.
#[derive(serde::Serialize, serde::Deserialize)]
struct Request<'a> {
    /// Request number, unique per sender.
    r: u64,
    /// The sender's answer channel.
    #[serde(borrow)]
    a: std::borrow::Cow<'a, str>,
    /// Unix ms after which the writer must not take it.
    x: i64,
    #[serde(borrow)]
    e: Vec<WireEvent<'a>>,
}

/// The writer's answer.
#[derive(serde::Serialize, serde::Deserialize)]
struct Answer {
    r: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<Forwarded>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<WireError>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireError {
    code: ErrorCode,
    message: String,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

impl From<&ApiError> for WireError {
    fn from(e: &ApiError) -> Self {
        WireError {
            code: e.code,
            message: e.message.clone(),
            retry_after_ms: e.retry_after.map(|d| d.as_millis() as u64),
        }
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        let mut out = ApiError::new(e.code, e.message);
        out.retry_after = e.retry_after_ms.map(Duration::from_millis);
        out
    }
}

/// Encodes a group for the writer.
fn encode_request(r: u64, answers: &str, expires: DateTime<Utc>, events: &[&NewEvent]) -> Result<Vec<u8>, String> {
    let mut e = Vec::with_capacity(events.len());
    for ev in events {
        e.push(WireEvent {
            t: ev.kind.as_str().into(),
            ts: ev.timestamp,
            id: ev.id.as_deref().map(Into::into),
            s: ev.source.as_deref().map(Into::into),
            d: serde_json::from_str(&ev.data_json).map_err(|e| e.to_string())?,
        });
    }
    serde_json::to_vec(&Request { r, a: answers.into(), x: expires.timestamp_millis(), e }).map_err(|e| e.to_string())
}

/// Decodes a forwarded group into events (parsing `data` only where the
/// writer needs it); `None` for a message that is not one.
fn decode_request(payload: &[u8], needs_data: impl Fn(&str) -> bool) -> Option<(u64, String, i64, Vec<NewEvent>)> {
    let req: Request<'_> = serde_json::from_slice(payload).ok()?;
    let mut events = Vec::with_capacity(req.e.len());
    for w in req.e {
        let data_json = w.d.get().to_string();
        let data = if needs_data(&w.t) { serde_json::from_str(&data_json).ok()? } else { Default::default() };
        events.push(NewEvent {
            kind: w.t.into_owned(),
            data,
            data_json,
            timestamp: w.ts,
            id: w.id.map(std::borrow::Cow::into_owned),
            source: w.s.map(std::borrow::Cow::into_owned),
        });
    }
    Some((req.r, req.a.into_owned(), req.x, events))
}

/// This replica's end of the relay.
pub struct Relay {
    target: RedisTarget,
    /// `<prefix>:relay:`
    keys: String,
    /// This process (replica name and a random suffix: a restarted replica
    /// never takes its predecessor's leftovers).
    me: String,
    role: watch::Sender<Role>,
    /// The shared connection (lease, forwards, answers), while connected.
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// Whether this replica's answer channel is subscribed.
    answers_up: AtomicBool,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Forwarded, ApiError>>>>,
    next_request: AtomicU64,
    /// Commit here until then (the writer failed to answer).
    direct_until: Mutex<Option<Instant>>,
    /// The lease and inbox tasks (stopped first at shutdown), and the
    /// answer subscription.
    writing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    answers: Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("me", &self.me).field("role", &*self.role.borrow()).finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts the lease and the answer subscription; [`Relay::serve`] adds
    /// the writer's side once the pipeline exists.
    pub fn start(target: RedisTarget, prefix: &str, replica: &str, metrics: Arc<Metrics>) -> Arc<Relay> {
        let relay = Arc::new(Relay {
            target,
            keys: format!("{prefix}:relay:"),
            me: format!("{replica}#{:016x}", rand::random::<u64>()),
            role: watch::Sender::new(Role::Unknown),
            conn: Mutex::new(None),
            answers_up: AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            direct_until: Mutex::new(None),
            writing: Mutex::new(Vec::new()),
            answers: Mutex::new(None),
            metrics,
        });
        for result in ["answered", "taken_back", "lost"] {
            relay.metrics.cluster_forwards_total.with_label_values(&[result]);
        }
        let lease = tokio::spawn(lease_loop(relay.clone()));
        relay.writing.lock().push(lease);
        *relay.answers.lock() = Some(tokio::spawn(answers_loop(relay.clone())));
        relay
    }

    /// Starts taking forwarded groups while this replica is the writer.
    pub fn serve(self: &Arc<Self>, submit: Arc<dyn Submit>) {
        let inbox = tokio::spawn(inbox_loop(self.clone(), submit));
        self.writing.lock().push(inbox);
    }

    /// At shutdown, before the pipeline drains: stops taking the others'
    /// groups, gives the lease up (another replica takes it within a
    /// second) and commits whatever is left here.
    pub async fn stop_writing(&self) {
        for t in self.writing.lock().drain(..) {
            t.abort();
        }
        let was_writer = self.role.send_replace(Role::Unknown) == Role::Writer;
        self.metrics.cluster_writer.set(0);
        if was_writer {
            let conn = self.conn.lock().clone();
            if let Some(mut c) = conn {
                let release =
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
                let _ = tokio::time::timeout(
                    IO_TIMEOUT,
                    redis::cmd("EVAL")
                        .arg(release)
                        .arg(1)
                        .arg(self.lease_key())
                        .arg(&self.me)
                        .query_async::<i64>(&mut c),
                )
                .await;
            }
        }
    }

    /// Stops everything (after [`Relay::stop_writing`] and the drain).
    pub async fn close(&self) {
        self.stop_writing().await;
        if let Some(t) = self.answers.lock().take() {
            t.abort();
        }
        self.fail_pending();
    }

    /// Whether a group would be forwarded now (else it is committed here).
    pub fn may_forward(&self) -> bool {
        matches!(*self.role.borrow(), Role::Forward(_))
            && self.answers_up.load(Ordering::SeqCst)
            && self.direct_until.lock().is_none_or(|until| Instant::now() >= until)
            && self.conn.lock().is_some()
    }

    fn lease_key(&self) -> String {
        format!("{}writer", self.keys)
    }

    fn inbox_key(&self, instance: &str) -> String {
        format!("{}{instance}:inbox", self.keys)
    }

    fn answers_channel(&self, instance: &str) -> String {
        format!("{}{instance}:answers", self.keys)
    }

    /// Forwards a group to the writer and waits for its answer. `None`: not
    /// forwarded (this replica writes, or no writer can be reached now);
    /// commit here.
    pub async fn forward(&self, events: &[&NewEvent]) -> Option<Result<Forwarded, ApiError>> {
        let Role::Forward(writer) = self.role.borrow().clone() else { return None };
        if !self.answers_up.load(Ordering::SeqCst) {
            return None;
        }
        if let Some(until) = *self.direct_until.lock() {
            if Instant::now() < until {
                return None;
            }
        }
        let mut conn = self.conn.lock().clone()?;
        let r = self.next_request.fetch_add(1, Ordering::Relaxed);
        let expires = Utc::now() + TAKE_WITHIN;
        let payload = match encode_request(r, &self.answers_channel(&self.me), expires, events) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot forward the group; committing here");
                return None;
            }
        };
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(r, tx);
        let inbox = self.inbox_key(&writer);
        let mut pipe = redis::pipe();
        pipe.cmd("RPUSH").arg(&inbox).arg(payload.as_slice()).ignore();
        // Leftovers of a writer that died go away by themselves.
        pipe.cmd("PEXPIRE").arg(&inbox).arg((TAKE_WITHIN * 5).as_millis() as u64).ignore();
        if let Err(e) = timed(&self.target, pipe.query_async::<()>(&mut conn)).await {
            // Most likely nothing arrived (a group that did is stored at
            // most once more, and not at all when its events have ids).
            // Redis is away: the next groups do not try (the lease loop
            // reconnects).
            self.pending.lock().remove(&r);
            *self.conn.lock() = None;
            self.go_direct(&writer);
            tracing::debug!(error = %e, "forwarding to the writer failed; committing here");
            return None;
        }
        let mut rx = rx;
        if let Ok(answer) = tokio::time::timeout(RECLAIM_AFTER, &mut rx).await {
            return Some(self.ended(answer.unwrap_or_else(|_| Err(lost()))));
        }
        // Not answered yet: was it taken at all? A group still in the inbox
        // is taken back (then the writer can never see it) and committed here.
        let mut reclaim = redis::cmd("LREM");
        reclaim.arg(&inbox).arg(1).arg(payload.as_slice());
        match timed(&self.target, reclaim.query_async::<i64>(&mut conn)).await {
            Ok(1) => {
                self.pending.lock().remove(&r);
                self.go_direct(&writer);
                self.metrics.cluster_forwards_total.with_label_values(&["taken_back"]).inc();
                return None;
            }
            // Taken by the writer: its answer may still come.
            Ok(_) => {}
            // Redis is away, so no answer can come either: say so now
            // rather than after the whole wait.
            Err(e) => {
                tracing::debug!(error = %e, "cannot take a forwarded group back");
                self.pending.lock().remove(&r);
                *self.conn.lock() = None;
                self.go_direct(&writer);
                return Some(self.ended(Err(lost())));
            }
        }
        match tokio::time::timeout(ANSWER_WITHIN - RECLAIM_AFTER, rx).await {
            Ok(answer) => Some(self.ended(answer.unwrap_or_else(|_| Err(lost())))),
            Err(_) => {
                self.pending.lock().remove(&r);
                self.go_direct(&writer);
                Some(self.ended(Err(lost())))
            }
        }
    }

    /// Counts how a forward ended.
    fn ended(&self, answer: Result<Forwarded, ApiError>) -> Result<Forwarded, ApiError> {
        let lost = matches!(&answer, Err(e) if e.message.starts_with(LOST));
        let result = if lost { "lost" } else { "answered" };
        self.metrics.cluster_forwards_total.with_label_values(&[result]).inc();
        answer
    }

    /// Commits here for a while: the writer did not take or answer a group.
    fn go_direct(&self, writer: &str) {
        *self.direct_until.lock() = Some(Instant::now() + DIRECT_AFTER_SILENCE);
        tracing::warn!(writer = %writer, "the cluster's writer did not answer a forwarded group; \
            committing on this replica for a while");
    }

    /// Fails every forward waiting for an answer (the answer channel broke).
    fn fail_pending(&self) {
        let waiting: Vec<_> = self.pending.lock().drain().collect();
        for (_, tx) in waiting {
            let _ = tx.send(Err(lost()));
        }
    }
}

const LOST: &str = "lost the link to the cluster's writer";

/// The answer to a forward whose fate is unknown.
fn lost() -> ApiError {
    ApiError::new(
        ErrorCode::PersistUnavailable,
        format!("{LOST}; the events may or may not be stored, retry with the same ids"),
    )
    .retry_after(RETRY_AFTER)
}

/// Keeps the shared connection and this replica's role: renews the lease
/// while holding it, else takes it when free or looks up who holds it.
async fn lease_loop(relay: Arc<Relay>) {
    let key = relay.lease_key();
    let mut backoff = BACKOFF_MIN;
    loop {
        let conn = relay.conn.lock().clone();
        let mut conn = match conn {
            Some(c) => c,
            None => match connect(&relay.target, &redis::AsyncConnectionConfig::new()).await {
                Ok(c) => {
                    backoff = BACKOFF_MIN;
                    *relay.conn.lock() = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::debug!(error = %e, "relay: cannot connect to Redis; committing here");
                    relay.metrics.cluster_writer.set(0);
                    relay.role.send_if_modified(|r| std::mem::replace(r, Role::Unknown) != Role::Unknown);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let lease_ms = LEASE.as_millis() as u64;
        let step = async {
            if *relay.role.borrow() == Role::Writer {
                let renewed: i64 = redis::cmd("EVAL")
                    .arg(RENEW)
                    .arg(1)
                    .arg(&key)
                    .arg(&relay.me)
                    .arg(lease_ms)
                    .query_async(&mut conn)
                    .await?;
                if renewed == 1 {
                    return Ok(Role::Writer);
                }
            }
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&relay.me)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .query_async(&mut conn)
                .await?;
            if taken.is_some() {
                return Ok(Role::Writer);
            }
            let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(match holder {
                Some(h) if h == relay.me => Role::Writer,
                Some(h) => Role::Forward(h),
                None => Role::Unknown,
            })
        };
        let role = match timed(&relay.target, step).await {
            Ok(role) => role,
            Err(e) => {
                tracing::debug!(error = %e, "relay: Redis call failed; committing here");
                *relay.conn.lock() = None;
                Role::Unknown
            }
        };
        relay.metrics.cluster_writer.set(i64::from(role == Role::Writer));
        relay.role.send_if_modified(|r| {
            if *r == role {
                return false;
            }
            match &role {
                Role::Writer => tracing::info!(replica = %relay.me, "this replica now commits the cluster's groups"),
                Role::Forward(w) => tracing::info!(writer = %w, "forwarding groups to the cluster's writer"),
                Role::Unknown => tracing::info!("no cluster writer known; committing on this replica"),
            }
            *r = role;
            true
        });
        tokio::time::sleep(LEASE_EVERY).await;
    }
}

/// Subscribes this replica's answer channel and hands answers to the
/// forwards waiting for them.
async fn answers_loop(relay: Arc<Relay>) {
    let channel = relay.answers_channel(&relay.me);
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = async {
            let c = relay.target.client()?;
            let mut pubsub = timed(&relay.target, c.get_async_pubsub()).await?;
            timed(&relay.target, pubsub.subscribe(&channel)).await?;
            Ok::<_, String>(pubsub)
        };
        match session.await {
            Ok(mut pubsub) => {
                backoff = BACKOFF_MIN;
                relay.answers_up.store(true, Ordering::SeqCst);
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(answer) = serde_json::from_slice::<Answer>(msg.get_payload_bytes()) else {
                        tracing::debug!("relay: ignored a message on the answer channel that is not one");
                        continue;
                    };
                    let Some(tx) = relay.pending.lock().remove(&answer.r) else { continue };
                    let result = match (answer.ok, answer.err) {
                        (Some(ok), _) => Ok(ok),
                        (None, Some(e)) => Err(e.into()),
                        (None, None) => {
                            Err(ApiError::new(ErrorCode::PersistUnavailable, "empty answer from the writer")
                                .retry_after(RETRY_AFTER))
                        }
                    };
                    let _ = tx.send(result);
                }
                relay.answers_up.store(false, Ordering::SeqCst);
                relay.fail_pending();
                tracing::debug!("relay: the answer channel closed");
            }
            Err(e) => tracing::debug!(error = %e, "relay: cannot subscribe the answer channel"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// While this replica is the writer: takes forwarded groups from its inbox
/// and submits each as one job of its pipeline.
async fn inbox_loop(relay: Arc<Relay>, submit: Arc<dyn Submit>) {
    let inbox = relay.inbox_key(&relay.me);
    let mut role = relay.role.subscribe();
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut backoff = BACKOFF_MIN;
    // Whether the last pop took something (then the next one need not block).
    let mut more = false;
    loop {
        if role.wait_for(|r| *r == Role::Writer).await.is_err() {
            return;
        }
        if conn.is_none() {
            // Its own connection: a blocking pop holds it.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            match connect(&relay.target, &config).await {
                Ok(c) => {
                    backoff = BACKOFF_MIN;
                    conn = Some(c);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "relay inbox: cannot connect");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        // A blocking pop of one when the inbox was empty last time (the
        // first group is handled at once), else whatever waits, without
        // blocking.
        let popped = async {
            if more {
                let all: Option<Vec<Vec<u8>>> = redis::cmd("LPOP").arg(&inbox).arg(TAKE_BURST).query_async(c).await?;
                return Ok(all.unwrap_or_default());
            }
            let first: Option<(String, Vec<u8>)> = redis::cmd("BLPOP").arg(&inbox).arg(1).query_async(c).await?;
            Ok::<_, redis::RedisError>(first.map(|(_, p)| vec![p]).unwrap_or_default())
        };
        let payloads = match tokio::time::timeout(IO_TIMEOUT + Duration::from_secs(1), popped).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(error = %relay.target.describe(&e), "relay inbox: pop failed; reconnecting");
                conn = None;
                continue;
            }
            Err(_) => {
                tracing::debug!("relay inbox: no answer from Redis; reconnecting");
                conn = None;
                continue;
            }
        };
        more = !payloads.is_empty();
        for payload in payloads {
            let relay = relay.clone();
            let submit = submit.clone();
            tokio::spawn(async move {
                let Some((r, answers, expires, events)) = decode_request(&payload, |k| submit.needs_data(k)) else {
                    tracing::debug!("relay inbox: ignored a message that is not a forwarded group");
                    return;
                };
                if Utc::now().timestamp_millis() > expires {
                    // Its sender may have given up; it answered 503 then.
                    tracing::debug!(
                        events = events.len(),
                        "relay inbox: dropped a forwarded group that waited too long"
                    );
                    return;
                }
                let result = submit.submit_forwarded(events).await;
                let answer = match &result {
                    Ok(ok) => Answer { r, ok: Some(ok.clone()), err: None },
                    Err(e) => Answer { r, ok: None, err: Some(e.into()) },
                };
                let Ok(payload) = serde_json::to_vec(&answer) else { return };
                let conn = relay.conn.lock().clone();
                if let Some(mut c) = conn {
                    let mut publish = redis::cmd("PUBLISH");
                    publish.arg(&answers).arg(payload);
                    if let Err(e) = timed(&relay.target, publish.query_async::<i64>(&mut c)).await {
                        tracing::debug!(error = %e, "relay: cannot send an answer");
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_event(kind: &str, id: Option<&str>, data: &str) -> NewEvent {
        NewEvent {
            kind: kind.into(),
            data: serde_json::from_str(data).unwrap(),
            data_json: data.into(),
            timestamp: "2026-12-07T04:00:00.123456Z".parse().unwrap(),
            id: id.map(Into::into),
            source: Some("svc".into()),
        }
    }

    #[test]
    fn a_forwarded_group_round_trips_with_data_parsed_only_where_needed() {
        let a = new_event("file_uploaded", Some("a-1"), r#"{"bytes":12,"name":"x\ny"}"#);
        let b = new_event("stats_update", None, r#"{"queueDepth":3}"#);
        let wire = encode_request(7, "p:relay:B:answers", Utc::now(), &[&a, &b]).unwrap();
        let (r, answers, _, back) = decode_request(&wire, |k| k == "stats_update").unwrap();
        assert_eq!((r, answers.as_str()), (7, "p:relay:B:answers"));
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[0].kind.as_str(), back[0].id.as_deref(), back[0].data_json.as_str()),
            ("file_uploaded", Some("a-1"), a.data_json.as_str())
        );
        assert_eq!(back[0].timestamp, a.timestamp, "the timestamp keeps its precision");
        assert!(back[0].data.is_empty(), "not needed: not parsed");
        assert_eq!(back[1].data, b.data);
        assert_eq!(back[1].source.as_deref(), Some("svc"));
        assert!(decode_request(b"hello", |_| true).is_none());
    }

    #[test]
    fn an_error_answer_keeps_its_code_and_retry_after() {
        let e = ApiError::new(ErrorCode::PersistUnavailable, "queue full").retry_after(Duration::from_secs(1));
        let wire = serde_json::to_vec(&Answer { r: 3, ok: None, err: Some((&e).into()) }).unwrap();
        let back: Answer = serde_json::from_slice(&wire).unwrap();
        let back: ApiError = back.err.unwrap().into();
        assert_eq!((back.code, back.message.as_str(), back.retry_after), (e.code, "queue full", e.retry_after));
    }
}
