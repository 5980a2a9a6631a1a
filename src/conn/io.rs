//! The socket wrapper that enforces the idle and request-head deadlines.
//!
//! The deadline is checked where hyper waits: in `poll_read`. While a read
//! would block and the connection is idle (or inside a request head), a timer
//! runs to the deadline; when it fires the read ends the connection. Doing
//! it at the socket covers the time before the first byte, which neither
//! hyper's header timeout nor hyper-util's protocol sniffing does.

use super::{ConnState, Phase, Slot};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A public connection's socket: holds its [`Slot`] for as long as the socket
/// lives (also inside an upgraded WebSocket) and ends reads at the deadline
/// of the current `Phase`.
#[derive(Debug)]
pub struct GuardedIo {
    stream: TcpStream,
    conn: Arc<ConnState>,
    /// Allocated on the first read that has to wait, re-armed after that.
    timer: Option<Pin<Box<Sleep>>>,
    /// Set once a deadline fired: every later read repeats the outcome.
    expired: Option<Phase>,
    /// The last write could not complete, so hyper still holds response
    /// bytes: a raw 408 written now would land inside them.
    write_blocked: bool,
    _slot: Slot,
}

impl GuardedIo {
    pub fn new(stream: TcpStream, conn: Arc<ConnState>, slot: Slot) -> Self {
        Self { stream, conn, timer: None, expired: None, write_blocked: false, _slot: slot }
    }

    /// A deadline fired in `phase`: idle connections just end (EOF, as if the
    /// client had closed); a request head that is late gets the contract's
    /// 408 (best effort, the socket is about to close) and an error.
    fn expire(&mut self, phase: Phase) -> Poll<io::Result<()>> {
        self.expired = Some(phase);
        self.conn.timed_out(phase);
        if phase == Phase::Head && !self.write_blocked {
            let _ = self.stream.try_write(&late_head_response(self.conn.request_timeout().as_secs()));
        }
        expired_read(phase)
    }
}

/// What a read returns once the deadline of `phase` has passed.
fn expired_read(phase: Phase) -> Poll<io::Result<()>> {
    match phase {
        Phase::Head => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request head did not arrive within server.request_timeout_secs",
        ))),
        _ => Poll::Ready(Ok(())),
    }
}

/// A whole HTTP/1.1 408 with the contract's error body, closing the
/// connection.
fn late_head_response(timeout_secs: u64) -> Vec<u8> {
    let body = crate::error::ApiError::new(
        crate::error::ErrorCode::RequestTimeout,
        format!("the request did not arrive within server.request_timeout_secs ({timeout_secs} s)"),
    )
    .body()
    .to_string();
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl AsyncRead for GuardedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(phase) = this.expired {
            return expired_read(phase);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.bytes_read();
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let Some((phase, deadline)) = this.conn.deadline(Some(cx.waker())) else { return Poll::Pending };
        if Instant::now() >= deadline {
            return this.expire(phase);
        }
        let timer = match &mut this.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => this.expire(phase),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.write_blocked = r.is_pending();
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.write_blocked = r.is_pending();
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_late_head_answer_is_a_complete_408() {
        let r = String::from_utf8(late_head_response(30)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "request_timeout");
    }
}
