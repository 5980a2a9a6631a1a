//! A hand-written WebSocket client on a plain `TcpStream`, for the cases a
//! well-behaved client library cannot play: a client that never reads, one
//! that ignores pings, one that drops the TCP connection abruptly, and
//! looking at the server's answer to a refused upgrade (status, headers and
//! the whole body).
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The server's answer to an upgrade request it refused.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

pub enum Handshake {
    Upgraded(RawWs),
    Refused(HttpReply),
}

impl Handshake {
    pub fn upgraded(self) -> RawWs {
        match self {
            Handshake::Upgraded(ws) => ws,
            Handshake::Refused(r) => panic!("upgrade refused: {} {}", r.status, String::from_utf8_lossy(&r.body)),
        }
    }

    pub fn refused(self) -> HttpReply {
        match self {
            Handshake::Upgraded(_) => panic!("expected a refusal, got 101"),
            Handshake::Refused(r) => r,
        }
    }
}

/// One frame as it came off the wire (server frames are never masked).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A data message or the close frame (pings and pongs are not reported).
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
    /// Code (1005 when the frame had none) and reason.
    Close(u16, String),
}

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Pings seen by `next_msg` (which never answers them).
    pub pings_seen: usize,
}

/// Opens a TCP connection, optionally with a small receive buffer (set before
/// connecting, so the advertised window is small from the start).
pub async fn tcp(addr: SocketAddr, recv_buffer: Option<u32>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(n) = recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    socket.connect(addr).await
}

/// Sends an upgrade request for `path_and_query` with `headers` and reads the
/// answer: a connected client on 101, else the whole HTTP reply.
pub async fn connect(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> io::Result<Handshake> {
    let mut stream = tcp(addr, recv_buffer).await?;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;

    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed during the handshake"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if status == 101 {
        let accept = headers.iter().find(|(k, _)| k == "sec-websocket-accept").map(|(_, v)| v.clone());
        let want = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        if accept.as_deref() != Some(want.as_str()) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad Sec-WebSocket-Accept {accept:?}")));
        }
        return Ok(Handshake::Upgraded(RawWs { stream, buf: rest, pings_seen: 0 }));
    }
    let len: Option<usize> = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok());
    let mut body = rest;
    loop {
        if len.is_some_and(|n| body.len() >= n) {
            break;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if let Some(n) = len {
        body.truncate(n);
    }
    Ok(Handshake::Refused(HttpReply { status, headers, body }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl RawWs {
    async fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.buf.len() < n {
            let mut chunk = vec![0u8; 64 * 1024];
            let got = self.stream.read(&mut chunk).await?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
        Ok(true)
    }

    /// The next frame; `None` on a clean EOF between frames.
    pub async fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        if !self.fill(2).await? {
            return if self.buf.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        let b0 = self.buf[0];
        let b1 = self.buf[1];
        if b1 & 0x80 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "server frames must not be masked"));
        }
        let (len, head) = match b1 & 0x7F {
            126 => {
                if !self.fill(4).await? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                if !self.fill(10).await? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if !self.fill(head + len).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let payload = self.buf[head..head + len].to_vec();
        self.buf.drain(..head + len);
        Ok(Some(Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload }))
    }

    /// The next data message or close frame, skipping (and never answering)
    /// pings and pongs. Errors on EOF.
    pub async fn next_msg(&mut self) -> io::Result<Msg> {
        loop {
            let Some(f) = self.read_frame().await? else {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF without a close frame"));
            };
            assert!(f.fin, "the server does not fragment messages");
            match f.opcode {
                OP_TEXT => return Ok(Msg::Text(String::from_utf8(f.payload).expect("text frames are UTF-8"))),
                OP_BINARY => return Ok(Msg::Binary(f.payload)),
                OP_CLOSE => {
                    let code =
                        if f.payload.len() >= 2 { u16::from_be_bytes([f.payload[0], f.payload[1]]) } else { 1005 };
                    let reason = String::from_utf8_lossy(f.payload.get(2..).unwrap_or(&[])).to_string();
                    return Ok(Msg::Close(code, reason));
                }
                OP_PING => self.pings_seen += 1,
                OP_PONG => {}
                other => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected opcode {other:#x}")))
                }
            }
        }
    }

    /// The next text message parsed as JSON, within `timeout`.
    pub async fn next_json(&mut self, timeout: Duration) -> serde_json::Value {
        match tokio::time::timeout(timeout, self.next_msg()).await {
            Ok(Ok(Msg::Text(t))) => serde_json::from_str(&t).expect("server messages are JSON"),
            Ok(other) => panic!("expected a text message, got {other:?}"),
            Err(_) => panic!("no message within {timeout:?}"),
        }
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await
    }

    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(OP_TEXT, text.as_bytes()).await
    }

    /// Drops the TCP connection with a RST, no close frame.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }
}
