//! One dashboard connection: a single task that reads the client, the hub,
//! the newest `stats_update` and the heartbeat timer, and writes through its
//! [`Outbox`]. It ends with an [`End`], which says why (and which close
//! frame goes out).

use super::end::End;
use super::guard::ConnectionGuard;
use super::outbox::{Out, Outbox, Sink};
use super::protocol::ClientMessage;
use super::replay::replay;
use super::socket::Socket;
use super::State;
use crate::hub::Frame;
use crate::internal_events::{WsDisconnected, WsInvalidMessage};
use crate::metrics::WsMessageType;
use crate::version::VERSION;
use futures::stream::SplitStream;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// Runs an upgraded connection to its end. `guard` counts it as open until
/// this returns; its end is counted before the guard uncounts it, so a scrape
/// that sees it gone also sees its disconnect.
///
/// The socket is split here, before the future: an `async fn` keeps its
/// arguments for its whole life, so the socket (~330 bytes, moved into the
/// split halves' shared cell on first use) would stay in every idle
/// connection's task as dead weight, once per `async fn` it passed through.
pub(super) fn serve(
    socket: Socket,
    after_seq: Option<u64>,
    guard: ConnectionGuard,
) -> impl std::future::Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    async move {
        let state = guard.state().clone();
        let id = format!("c{:x}-{:08x}", state.sockets.next_id.fetch_add(1, Ordering::Relaxed), rand::random::<u32>());
        let log = ConnLog { id, ip: guard.ip() };
        let end = connection(state.clone(), sink, stream, after_seq, &log).await;
        log.in_scope(|| WsDisconnected { reason: end.reason() }.emit(&state.metrics));
        drop(guard);
    }
}

/// Who a connection's log lines are about: each line is logged inside a
/// `ws` span (`conn`, `ip`) made for it. The span is not held for the
/// connection's life: entering it on every poll cost ~2.5% of fan-out CPU,
/// and merely holding it kept ~0.4 KiB per idle dashboard in the
/// subscriber's registry (its slot and formatted fields).
struct ConnLog {
    id: String,
    ip: std::net::IpAddr,
}

impl ConnLog {
    fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::info_span!("ws", conn = %self.id, ip = %self.ip).in_scope(f)
    }
}

async fn connection(
    state: Arc<State>,
    sink: Sink,
    mut stream: SplitStream<Socket>,
    after_seq: Option<u64>,
    log: &ConnLog,
) -> End {
    let live = state.config.borrow().clone();
    let ws_cfg = live.config.ws.clone();
    // Subscribe before anything is read from the store (see the module doc).
    let mut hub_rx = state.hub.subscribe();
    let mut out = Outbox::new(&state, sink, ws_cfg.send_queue_len);
    let ack = Out::message(
        WsMessageType::ConnectionAck,
        json!({"connectionId": log.id, "statsIntervalSecs": live.config.stats.interval_secs,
               "lastSeq": state.stats.last_seq(), "serverVersion": VERSION}),
    );
    let mut stats_rx = state.sockets.stats_tx.subscribe();
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
    out.push(ack);
    out.push(Out::message(WsMessageType::StatsUpdate, Value::Object(state.stats_snapshot())));
    let mut shutdown_rx = state.sockets.shutdown_tx.subscribe();
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
            match replay(&state, &mut out, after, None, &filter, &ws_cfg, &mut shutdown_rx).await {
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
                    log.in_scope(|| tracing::debug!(error = %e, "websocket write failed"));
                    break End::Broken;
                },
                msg = stream.next() => match msg {
                    None => break End::ClientClose,
                    Some(Ok(Message::Close(_))) => break End::ClientClose,
                    Some(Ok(Message::Pong(_))) => pong_deadline = None,
                    Some(Ok(Message::Ping(_))) | Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => invalid(&state, log, "a binary frame"),
                    Some(Ok(Message::Text(text))) => {
                        client_messages += 1;
                        match ClientMessage::parse(&text) {
                            Ok(ClientMessage::Ping) => {
                                if !out.push(Out::message(WsMessageType::Pong, json!({}))) {
                                    break End::SlowConsumer;
                                }
                            }
                            Ok(ClientMessage::Subscribe(types)) => filter = types,
                            Ok(ClientMessage::Resume(after)) if !resumed && client_messages == 1 => {
                                resumed = true;
                                match replay(&state, &mut out, after, first_live_sent, &filter, &ws_cfg, &mut shutdown_rx).await {
                                    Ok(upto) => replayed_upto = upto,
                                    Err(end) => break end,
                                }
                            }
                            Ok(ClientMessage::Resume(_)) => invalid(&state, log, "a resume that is not the first message"),
                            Err(why) => invalid(&state, log, &why),
                        }
                    }
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                        log.in_scope(|| tracing::warn!(error = %e, "client frame over 64 KiB"));
                        break End::TooBig;
                    }
                    Some(Err(e)) => {
                        log.in_scope(|| tracing::debug!(error = %e, "websocket read error"));
                        break End::Broken;
                    }
                },
                frame = hub_rx.recv() => {
                    let push = |f| out.push(Out::Event(f));
                    if let Some(end) = take_frames(frame, &mut hub_rx, push, &filter, replayed_upto, &mut first_live_sent) {
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

/// Queues (with `push`, `false` when the outbox is full) `first` and
/// whatever else the hub holds already, up to [`HUB_BATCH`] in all, so they
/// go out in one write. `Some` ends the connection.
fn take_frames(
    first: Result<Arc<Frame>, broadcast::error::RecvError>,
    hub_rx: &mut broadcast::Receiver<Arc<Frame>>,
    mut push: impl FnMut(Arc<Frame>) -> bool,
    filter: &Option<HashSet<String>>,
    replayed_upto: u64,
    first_live_sent: &mut Option<u64>,
) -> Option<End> {
    use broadcast::error::{RecvError, TryRecvError};
    let mut frame = first;
    for taken in 1..=HUB_BATCH {
        match frame {
            Ok(f) => {
                let skip =
                    f.event.seq <= replayed_upto || filter.as_ref().is_some_and(|set| !set.contains(&*f.event.kind));
                if !skip {
                    first_live_sent.get_or_insert(f.event.seq);
                    if !push(f) {
                        return Some(End::SlowConsumer);
                    }
                }
            }
            // The hub's ring moved past this connection: it is too slow.
            Err(RecvError::Lagged(_)) => return Some(End::SlowConsumer),
            Err(RecvError::Closed) => return Some(End::Shutdown),
        }
        if taken == HUB_BATCH {
            // The rest waits for the next `recv`: a frame taken here would
            // have no turn of the loop left to be queued in.
            break;
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

/// Counts and logs (rate-limited) an invalid client message.
fn invalid(state: &State, log: &ConnLog, what: &str) {
    log.in_scope(|| WsInvalidMessage { what }.emit(&state.metrics));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::hub::Hub;

    /// A backlog longer than one batch is taken in several calls, none of
    /// its frames skipped (the last `try_recv` of a full batch once took a
    /// frame and dropped it: every 257th event of a burst went missing).
    #[tokio::test]
    async fn a_backlog_longer_than_a_batch_loses_no_frame() {
        let hub = Hub::new(4096);
        let mut rx = hub.subscribe();
        let n = 3 * HUB_BATCH as u64 + 7;
        let events: Vec<_> =
            (1..=n).map(|s| Arc::new(Event::new(s, "x", crate::event::now_ms(), None, None, "{}"))).collect();
        hub.publish(&events);
        let (mut seen, mut first_live) = (Vec::new(), None);
        let mut calls = 0;
        // Until the hub has nothing more (a dropped frame shows as a short
        // `seen`, not as a wait for a frame that never comes).
        while let Ok(first) = rx.try_recv() {
            let first = Ok(first);
            let push = |f: Arc<Frame>| {
                seen.push(f.event.seq);
                true
            };
            assert!(take_frames(first, &mut rx, push, &None, 0, &mut first_live).is_none());
            calls += 1;
        }
        assert_eq!(seen, (1..=n).collect::<Vec<_>>());
        assert_eq!(calls, 4, "{HUB_BATCH} frames a call");
        assert_eq!(first_live, Some(1));
        assert!(rx.try_recv().is_err(), "nothing left over");
    }

    #[tokio::test]
    async fn a_full_outbox_ends_the_connection_as_a_slow_consumer() {
        let hub = Hub::new(16);
        let mut rx = hub.subscribe();
        let events: Vec<_> =
            (1..=3).map(|s| Arc::new(Event::new(s, "x", crate::event::now_ms(), None, None, "{}"))).collect();
        hub.publish(&events);
        let first = rx.recv().await;
        let mut room = 2;
        let push = |_| {
            room -= 1;
            room >= 0
        };
        assert_eq!(take_frames(first, &mut rx, push, &None, 0, &mut None), Some(End::SlowConsumer));
    }
}
