//! The socket wrapper that enforces the idle, request-head and write
//! deadlines.
//!
//! The deadlines are checked where hyper waits. In `poll_read`: while a read
//! would block and the connection is idle (or inside a request head), a timer
//! runs to the deadline; when it fires the read ends the connection. Doing
//! it at the socket covers the time before the first byte, which neither
//! hyper's header timeout nor hyper-util's protocol sniffing does. In
//! `poll_write`: while a write would block (the client takes nothing), a
//! second timer runs to `server.write_timeout_secs`; if the socket's send
//! queue shrank by then the client took bytes and the clock restarts, else
//! the write fails and the connection closes with a reset. Every write that
//! gets through disarms it, so the hot path (writes that never wait) costs
//! a branch and a store, and a connection allocates that timer at most once.

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
    /// bytes: a raw 408 written now would land inside them, and the
    /// connection is not idle yet (the write deadline runs instead).
    write_blocked: bool,
    /// When a write got through after waiting for the client, last: a large
    /// response outlives its request (hyper takes a whole body at once), so
    /// the idle clock starts when its bytes are out, not when it was handed
    /// over. Set only after a wait, so writes that never wait cost nothing.
    write_resumed_at: Option<Instant>,
    /// While writes wait for the client: when the client must have taken
    /// something. Cleared by every write that gets through.
    write_deadline: Option<Instant>,
    /// The socket's send queue when the write deadline was (re)armed: if it
    /// shrank by the deadline, the client took bytes and the clock restarts.
    write_queued: Option<usize>,
    /// Allocated on the first write that has to wait, re-armed after that.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// The connection is a WebSocket now: no write deadline, ever.
    write_exempt: bool,
    /// The write deadline passed: every later read and write fails.
    write_expired: bool,
    _slot: Slot,
}

impl GuardedIo {
    pub fn new(stream: TcpStream, conn: Arc<ConnState>, slot: Slot) -> Self {
        Self {
            stream,
            conn,
            timer: None,
            expired: None,
            write_blocked: false,
            write_resumed_at: None,
            write_deadline: None,
            write_queued: None,
            write_timer: None,
            write_exempt: false,
            write_expired: false,
            _slot: slot,
        }
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

    /// After a write attempt: a write that got through (or failed) disarms
    /// the write deadline; one that waits arms it (from the first wait since
    /// the last progress). At the deadline, the client has taken nothing if
    /// the socket's send queue did not shrink meanwhile: the write fails.
    /// (Waiting only for the socket to be writable again would not do: the
    /// kernel says so once a third of a send buffer of up to 4 MiB is free,
    /// which a slow reader that keeps reading may well take longer than the
    /// timeout for.)
    fn after_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            if self.write_blocked && !self.write_exempt {
                self.write_resumed_at = Some(Instant::now());
            }
            self.write_blocked = false;
            self.write_deadline = None;
            return r;
        }
        self.write_blocked = true;
        if self.write_exempt {
            return Poll::Pending;
        }
        let mut deadline = match self.write_deadline {
            Some(d) => d,
            None => match self.conn.write_deadline() {
                Some(d) => {
                    self.write_queued = send_queue_len(&self.stream);
                    *self.write_deadline.insert(d)
                }
                None => {
                    self.write_exempt = true;
                    return Poll::Pending;
                }
            },
        };
        loop {
            if armed(&mut self.write_timer, deadline).as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match (self.write_queued, send_queue_len(&self.stream)) {
                (Some(before), Some(now)) if now < before => {
                    self.write_queued = Some(now);
                    let Some(next) = self.conn.write_deadline() else { return Poll::Pending };
                    deadline = *self.write_deadline.insert(next);
                }
                _ => return self.expire_write(),
            }
        }
    }

    /// The client took nothing for `server.write_timeout_secs`: counted once,
    /// and the socket is set to close with a reset, so the kernel drops the
    /// unsent response at once instead of holding it for a client that does
    /// not read (a plain close would keep probing its zero window).
    fn expire_write<T>(&mut self) -> Poll<io::Result<T>> {
        if !self.write_expired {
            self.write_expired = true;
            self.conn.write_timed_out();
            let _ = self.stream.set_zero_linger();
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took nothing of the response within server.write_timeout_secs",
        )))
    }
}

/// Bytes in `stream`'s send queue (not yet sent, or not yet acknowledged):
/// it shrinks while the client takes a response. `None` where the platform
/// cannot tell; the write deadline then sees progress only in writes that
/// get through.
#[cfg(target_os = "linux")]
fn send_queue_len(stream: &TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SIOCOUTQ (TIOCOUTQ on Linux). SAFETY: the call writes one c_int
    // through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then_some(queued.max(0) as usize)
}

#[cfg(not(target_os = "linux"))]
fn send_queue_len(_stream: &TcpStream) -> Option<usize> {
    None
}

/// `slot`'s timer set to `deadline`: allocated the first time, re-armed
/// (not re-allocated) after that.
fn armed(slot: &mut Option<Pin<Box<Sleep>>>, deadline: Instant) -> &mut Pin<Box<Sleep>> {
    match slot {
        Some(t) => {
            if t.deadline() != deadline {
                t.as_mut().reset(deadline);
            }
            t
        }
        None => slot.insert(Box::pin(tokio::time::sleep_until(deadline))),
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
        if this.write_expired {
            return this.expire_write();
        }
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
        let Some((phase, mut deadline)) = this.conn.deadline(Some(cx.waker())) else { return Poll::Pending };
        if phase == Phase::Idle {
            if this.write_blocked {
                // The last response is still going out: not idle yet.
                return Poll::Pending;
            }
            if let Some(resumed) = this.write_resumed_at {
                deadline = deadline.max(resumed + this.conn.idle_timeout());
            }
        }
        if Instant::now() >= deadline {
            return this.expire(phase);
        }
        match armed(&mut this.timer, deadline).as_mut().poll(cx) {
            Poll::Ready(()) => this.expire(phase),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.write_expired {
            return self.expire_write();
        }
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.after_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.write_expired {
            return self.expire_write();
        }
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
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
