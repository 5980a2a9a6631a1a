//! The sending side of a connection: its bounded queue, the newest unsent
//! `stats_update`, and the socket's sending half.

use super::end::End;
use super::protocol::message;
use super::socket::Socket;
use super::State;
use crate::hub::Frame;
use crate::metrics::WsMessageType;
use futures::{ready, SinkExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

/// How long a closing handshake may wait for a client that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A message waiting in a connection's outbox.
pub(super) enum Out {
    Event(Arc<Frame>),
    Text(WsMessageType, Utf8Bytes),
    Ping,
}

impl Out {
    /// A `{"type","data","timestamp"}` message of type `kind`.
    pub(super) fn message(kind: WsMessageType, data: serde_json::Value) -> Out {
        Out::Text(kind, message(kind, data))
    }

    /// The message and its type (`None`: a ping, which is not counted).
    fn into_message(self) -> (Option<WsMessageType>, Message) {
        match self {
            Out::Event(f) => (Some(WsMessageType::Event), Message::Text(f.text.clone())),
            Out::Text(kind, text) => (Some(kind), Message::Text(text)),
            Out::Ping => (None, Message::Ping(Default::default())),
        }
    }
}

pub(super) type Sink = futures::stream::SplitSink<Socket, Message>;

/// The sending side of one connection, driven by the connection's own task
/// between its other work (one task per connection, no channel between a
/// reader and a writer): a bounded queue of messages (`ws.send_queue_len`;
/// full means the client is a slow consumer), the newest unsent
/// `stats_update` (latest wins), and the socket's sending half.
pub(super) struct Outbox<'a> {
    state: &'a State,
    /// `sidewire_ws_messages_sent_total{type="event"}`, looked up once.
    events_sent: prometheus::IntCounter,
    sink: Sink,
    queue: VecDeque<Out>,
    cap: usize,
    pub(super) stats: Option<Utf8Bytes>,
    /// Messages were handed to the sink since its last completed flush.
    unflushed: bool,
}

impl<'a> Outbox<'a> {
    pub(super) fn new(state: &'a State, sink: Sink, cap: usize) -> Self {
        let events_sent = state.metrics.ws_messages_sent_total.with_label_values(&[WsMessageType::Event.label()]);
        Self { state, events_sent, sink, queue: VecDeque::new(), cap: cap.max(1), stats: None, unflushed: false }
    }

    /// Queues a message; `false` when the queue is full (a slow consumer).
    pub(super) fn push(&mut self, item: Out) -> bool {
        self.try_push(item).is_ok()
    }

    /// Queues a message, or hands it back when the queue is full.
    pub(super) fn try_push(&mut self, item: Out) -> Result<(), Out> {
        if self.queue.len() >= self.cap {
            return Err(item);
        }
        self.queue.push_back(item);
        Ok(())
    }

    pub(super) fn has_work(&self) -> bool {
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
                Some(text) => (Some(WsMessageType::StatsUpdate), Message::Text(text)),
                None => self.queue.pop_front().expect("checked above").into_message(),
            };
            if let Err(e) = self.sink.start_send_unpin(msg) {
                break Err(e);
            }
            self.unflushed = true;
            match kind {
                None => {}
                Some(WsMessageType::Event) => events += 1,
                Some(other) => self.state.metrics.ws_messages_sent_total.with_label_values(&[other.label()]).inc(),
            }
            if kind.is_some() {
                messages += 1;
            }
        };
        if events > 0 {
            self.events_sent.inc_by(events);
        }
        if messages > 0 {
            self.state.stats.messages_window.add(messages);
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

    pub(super) async fn write(&mut self) -> Result<(), WsError> {
        std::future::poll_fn(|cx| self.poll_write(cx)).await
    }

    /// Ends the connection from our side, within [`CLOSE_TIMEOUT`]: sends the
    /// close frame `end` calls for (if any) and flushes. After the client's
    /// own close, tungstenite refuses a second close frame
    /// (`SendAfterClosing`) but has queued its reply to the client's; the
    /// flush in `close()` is what sends that reply, so it runs whether or not
    /// the send succeeded. Messages still queued are not sent.
    pub(super) async fn close(mut self, end: End) {
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
