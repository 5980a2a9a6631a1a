//! `broadcast.backend = "redis"`: each replica publishes every batch it
//! commits once, on `<prefix>:events`; every replica subscribes and hands
//! the others' batches to its sequencer.
//!
//! Redis pub/sub is at-most-once: a message published while a subscriber
//! is disconnected is gone. That is fine here: the sequencer notices the
//! jump in seqs (or the store's head check does) and reads the missing
//! events from the store. Liveness: the publisher sends a small tick every
//! [`TICK_EVERY`]; a subscriber that hears nothing (not even its own ticks)
//! for [`SILENCE`] reconnects, so a stalled connection is noticed, not only
//! a closed one.
//!
//! Message: one header line of JSON (`o`: the origin replica, `s`: the
//! stats after the batch), then one event per line in its wire form.

use super::supervisor::{supervise, BusLink, BACKOFF_MAX, BACKOFF_MIN};
use super::Input;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::persist::Batch;
use crate::stats::DurableStats;
use crate::tls::redis::RedisTarget;
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The publisher's tick (liveness of the bus).
pub const TICK_EVERY: Duration = Duration::from_millis(1000);
/// A subscriber silent this long reconnects.
pub const SILENCE: Duration = Duration::from_millis(3500);
/// Deadline of a connect or a call (also the commit relay's).
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Batches waiting to be published.
const PUBLISH_QUEUE: usize = 1024;
/// Most batches sent in one pipeline.
const PUBLISH_BURST: usize = 64;

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    /// Origin replica.
    o: String,
    /// Stats after the batch; absent in a tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<DurableStats>,
}

/// Encodes a batch as a bus message.
pub fn encode(origin: &str, batch: &Batch) -> Vec<u8> {
    let header = Header { o: origin.to_string(), s: Some((*batch.stats).clone()) };
    let mut out = serde_json::to_vec(&header).expect("stats serialize");
    for e in &batch.events {
        out.push(b'\n');
        out.extend_from_slice(&e.json);
    }
    out
}

/// What a bus message holds.
#[derive(Debug)]
pub enum Message {
    /// From this replica (a tick or its own batch): liveness only.
    Own,
    /// Another replica's tick.
    Tick,
    Batch(Batch),
}

/// Decodes a bus message; `None` when it is not one of ours.
pub fn decode(me: &str, payload: &[u8]) -> Option<Message> {
    let header_end = payload.iter().position(|b| *b == b'\n').unwrap_or(payload.len());
    let header: Header = serde_json::from_slice(&payload[..header_end]).ok()?;
    if header.o == me {
        return Some(Message::Own);
    }
    let Some(stats) = header.s else { return Some(Message::Tick) };
    // One copy of the message; each event keeps its line as its wire form.
    let body = bytes::Bytes::copy_from_slice(payload.get(header_end + 1..)?);
    let mut events = Vec::new();
    let mut at = 0;
    while at <= body.len() {
        let end = body[at..].iter().position(|b| *b == b'\n').map_or(body.len(), |p| at + p);
        events.push(Arc::new(Event::from_wire(body.slice(at..end))?));
        at = end + 1;
    }
    if events.is_empty() || events.windows(2).any(|w| w[1].seq <= w[0].seq) {
        return None;
    }
    Some(Message::Batch(Batch { events, stats: Arc::new(stats) }))
}

/// Starts the publisher and the subscriber; answers the publisher's queue.
pub(crate) fn start(
    target: RedisTarget,
    prefix: String,
    me: String,
    sequencer: mpsc::Sender<Input>,
    bus_up: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> (mpsc::Sender<Batch>, Vec<tokio::task::JoinHandle<()>>) {
    let channel = format!("{prefix}:events");
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    target.warn_if_insecure();
    let publisher = tokio::spawn(publish_loop(target.clone(), channel.clone(), me.clone(), rx));
    let subscriber = Subscriber { target, channel, me, sequencer: sequencer.clone() };
    let subscriber = tokio::spawn(supervise(subscriber, sequencer, bus_up, metrics));
    (tx, vec![publisher, subscriber])
}

/// A call with the I/O deadline; errors in words (a TLS failure says what
/// failed, see [`RedisTarget::describe`]).
pub(super) async fn timed<T>(
    target: &RedisTarget,
    f: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| target.describe(&e)),
        Err(_) => Err(target.no_answer(IO_TIMEOUT)),
    }
}

/// A multiplexed connection to `target` (the URL is exposed only inside),
/// under the I/O deadline.
pub(super) async fn connect(
    target: &RedisTarget,
    config: &redis::AsyncConnectionConfig,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = target.client()?;
    timed(target, client.get_multiplexed_async_connection_with_config(config)).await
}

async fn publish_loop(target: RedisTarget, channel: String, me: String, mut rx: mpsc::Receiver<Batch>) {
    let tick = serde_json::to_vec(&Header { o: me.clone(), s: None }).expect("header");
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut backoff = BACKOFF_MIN;
    let mut ticker = tokio::time::interval(TICK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        tokio::select! {
            b = rx.recv() => {
                let Some(b) = b else { return };
                payloads.push(encode(&me, &b));
                while payloads.len() < PUBLISH_BURST {
                    match rx.try_recv() {
                        Ok(b) => payloads.push(encode(&me, &b)),
                        Err(_) => break,
                    }
                }
            }
            _ = ticker.tick() => payloads.push(tick.clone()),
        }
        if conn.is_none() {
            match connect(&target, &redis::AsyncConnectionConfig::new()).await {
                Ok(c) => {
                    conn = Some(c);
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    // Dropped: the other replicas fill these from the store.
                    tracing::debug!(error = %e, "redis publisher cannot connect");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let mut pipe = redis::pipe();
        for p in &payloads {
            pipe.cmd("PUBLISH").arg(&channel).arg(p.as_slice()).ignore();
        }
        if let Err(e) = timed(&target, pipe.query_async::<()>(c)).await {
            tracing::debug!(error = %e, "redis publish failed; reconnecting");
            conn = None;
        }
    }
}

/// The subscriber side: one pub/sub connection on the channel.
struct Subscriber {
    target: RedisTarget,
    channel: String,
    me: String,
    sequencer: mpsc::Sender<Input>,
}

#[async_trait]
impl BusLink for Subscriber {
    type Session = redis::aio::PubSub;

    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn connect(&mut self) -> Result<Self::Session, String> {
        let c = self.target.client()?;
        let mut pubsub = timed(&self.target, c.get_async_pubsub()).await?;
        timed(&self.target, pubsub.subscribe(&self.channel)).await?;
        Ok(pubsub)
    }

    async fn run(&mut self, mut pubsub: Self::Session) -> String {
        let mut messages = pubsub.on_message();
        loop {
            match tokio::time::timeout(SILENCE, messages.next()).await {
                Err(_) => return format!("nothing heard on {} for {} s", self.channel, SILENCE.as_secs_f32()),
                Ok(None) => return "the connection closed".to_string(),
                Ok(Some(msg)) => match decode(&self.me, msg.get_payload_bytes()) {
                    Some(Message::Batch(b)) => {
                        if self.sequencer.try_send(Input::Remote(b)).is_err() {
                            tracing::debug!("sequencer queue full; the gap is filled from the store");
                        }
                    }
                    Some(Message::Own | Message::Tick) => {}
                    None => tracing::debug!("ignored a message on the bus channel that is not sidewire's"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(seq, "x", crate::event::now_ms(), Some(&format!("id-{seq}")), None, "{\"a\":\"b\\nc\"}"))
    }

    #[test]
    fn a_batch_round_trips_and_own_messages_are_recognised() {
        let stats = DurableStats { last_seq: 3, events_total: 3, ..Default::default() };
        let batch = Batch { events: vec![ev(2), ev(3)], stats: Arc::new(stats.clone()) };
        let wire = encode("a", &batch);
        assert!(matches!(decode("a", &wire), Some(Message::Own)));
        let Some(Message::Batch(back)) = decode("b", &wire) else { panic!("not a batch") };
        assert_eq!(back.events, batch.events);
        assert_eq!(*back.stats, stats);
        let tick = serde_json::to_vec(&Header { o: "a".into(), s: None }).unwrap();
        assert!(matches!(decode("b", &tick), Some(Message::Tick)));
        assert!(decode("b", b"hello").is_none());
    }
}
