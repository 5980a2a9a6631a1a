//! The front door (issue 14; contract section 7 `server.idle_timeout_secs`,
//! `server.request_timeout_secs`, `server.write_timeout_secs`,
//! `server.max_http_connections`, section 2 408 `request_timeout`): idle and
//! slow connections, clients that stop reading (issue 22), the connection
//! cap, and their live reload. Real servers on loopback, raw sockets where the
//! point is what a misbehaving client does.

use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sidewire::config::{Config, LiveConfig};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A server with the given front-door settings (seconds, seconds, connections).
async fn start(idle: u64, request: u64, max: usize) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.server.idle_timeout_secs = idle;
    cfg.server.request_timeout_secs = request;
    cfg.server.max_http_connections = max;
    (TestServer::start(cfg).await, dir)
}

/// How a socket ended (or not) within a time limit.
#[derive(Debug, PartialEq)]
enum Ending {
    /// EOF or reset, after this long.
    Closed(Duration),
    /// Bytes came instead (what they were).
    Data(String),
    StillOpen,
}

/// Waits up to `limit` for the server to close `sock`, which sends nothing.
async fn ending(sock: &mut TcpStream, limit: Duration) -> Ending {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(limit, sock.read(&mut buf)).await {
        Err(_) => Ending::StillOpen,
        Ok(Ok(0)) | Ok(Err(_)) => Ending::Closed(started.elapsed()),
        Ok(Ok(n)) => Ending::Data(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

/// Reads one HTTP/1.1 response (head + `Content-Length` body) from `sock`
/// within `limit`: (status, head, body). `None` when the socket closed or
/// nothing whole came.
async fn read_response(sock: &mut TcpStream, limit: Duration) -> Option<(u16, String, String)> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_string();
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0usize);
            if buf.len() >= end + 4 + len {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                return Some((status, head, text[end + 4..end + 4 + len].to_string()));
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// One keep-alive `GET path` on an open socket: the status.
async fn get_on(sock: &mut TcpStream, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: sidewire\r\n\r\n");
    sock.write_all(req.as_bytes()).await.ok()?;
    read_response(sock, Duration::from_secs(5)).await.map(|(status, _, _)| status)
}

async fn metric(c: &reqwest::Client, metrics_base: &str, sample: &str) -> Option<f64> {
    let text = get_reply(c, &format!("{metrics_base}/metrics")).await.text;
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------- idle

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_idle_timeout() {
    let (srv, _dir) = start(1, 30, 0).await;
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    match ending(&mut silent, Duration::from_secs(5)).await {
        Ending::Closed(after) => {
            assert!(after >= Duration::from_millis(900), "closed before the idle timeout: {after:?}");
            assert!(after <= Duration::from_secs(2), "idle_timeout_secs = 1, closed after {after:?}");
        }
        other => panic!("a silent connection must be closed after 1 s (+1 s): {other:?}"),
    }
    // The same between keep-alive requests.
    let mut kept = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get_on(&mut kept, "/healthz").await, Some(200));
    assert_eq!(get_on(&mut kept, "/api/v1/stats").await, Some(200), "keep-alive works within the timeout");
    match ending(&mut kept, Duration::from_secs(5)).await {
        Ending::Closed(after) => assert!(after <= Duration::from_secs(2), "closed after {after:?}"),
        other => panic!("an idle keep-alive connection must be closed after 1 s (+1 s): {other:?}"),
    }
    let c = client();
    assert!(metric(&c, &srv.base, r#"sidewire_http_timeouts_total{phase="idle"}"#).await.unwrap() >= 2.0);
    srv.stop().await;
}

#[tokio::test]
async fn a_thousand_silent_connections_are_all_closed() {
    // Both ends live in this process: stay well inside its open-file limit.
    let soft = sidewire::conn::limit::raise_nofile_limit().map(|l| l.soft).unwrap_or(1024);
    let n = 1000.min((soft.saturating_sub(400) / 3) as usize);
    let (srv, _dir) = start(1, 30, 0).await;
    let mut socks = Vec::new();
    for _ in 0..n {
        socks.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    let opened = Instant::now();
    let endings = futures::future::join_all(socks.iter_mut().map(|s| ending(s, Duration::from_secs(4)))).await;
    let open = endings.iter().filter(|e| !matches!(e, Ending::Closed(_))).count();
    assert_eq!(open, 0, "still open or answered after {:?}", opened.elapsed());
    // The slots came back: the server holds no connection now.
    wait_until("open connections back to 0", Duration::from_secs(5), || async {
        srv.app.metrics.http_open_connections.get() == 0
    })
    .await;
    srv.stop().await;
}

// ---------------------------------------------------------------- request timeout

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_gets_408_and_the_connection_closes() {
    // Idle is shorter than the request timeout: once the first byte is in,
    // the request timeout is the one that runs.
    let (srv, _dir) = start(1, 2, 0).await;
    let mut sock = TcpStream::connect(srv.addr).await.unwrap();
    let started = Instant::now();
    sock.write_all(b"POST /api/v1/ingest HTTP/1.1\r\nHost: sidewire\r\nContent-Ty").await.unwrap();
    let (status, head, body) = read_response(&mut sock, Duration::from_secs(5)).await.expect("a 408 answer");
    let after = started.elapsed();
    assert_eq!(status, 408, "{head}");
    assert!(after >= Duration::from_millis(1900) && after <= Duration::from_secs(3), "answered after {after:?}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert_error(status, &serde_json::from_str(&body).unwrap_or(Value::Null), 408, "request_timeout", None);
    assert!(matches!(ending(&mut sock, Duration::from_secs(2)).await, Ending::Closed(_)));
    srv.stop().await;
}

#[tokio::test]
async fn a_slow_body_gets_408_with_the_error_body_and_the_connection_closes() {
    let (srv, _dir) = start(1, 2, 0).await;
    let mut sock = TcpStream::connect(srv.addr).await.unwrap();
    let started = Instant::now();
    let body = json!({"type": "slow_body", "data": {"pad": "x".repeat(200)}}).to_string();
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nHost: sidewire\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    // One byte every 300 ms: never idle for a second, never done in 2 s.
    let (mut rd, mut wr) = sock.into_split();
    let bytes = body.into_bytes();
    let dribble = tokio::spawn(async move {
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), rd.read_to_end(&mut buf)).await;
    let after = started.elapsed();
    dribble.abort();
    assert!(read.is_ok(), "no answer and no close within 6 s");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert_error(408, &serde_json::from_str(body).unwrap(), 408, "request_timeout", None);
    assert!(after >= Duration::from_millis(1900) && after <= Duration::from_secs(3), "answered after {after:?}");
    let c = client();
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(0), "nothing of a late request is accepted");
    assert_eq!(metric(&c, &srv.base, r#"sidewire_ingest_requests_total{status="408"}"#).await, Some(1.0));
    assert_eq!(metric(&c, &srv.base, r#"sidewire_http_timeouts_total{phase="request_body"}"#).await, Some(1.0));
    srv.stop().await;
}

#[tokio::test]
async fn a_slow_request_within_the_timeout_is_served_even_with_pauses_longer_than_idle() {
    let (srv, _dir) = start(1, 4, 0).await;
    let mut sock = TcpStream::connect(srv.addr).await.unwrap();
    let body = json!({"type": "slow_but_fine"}).to_string();
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nHost: sidewire\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let (a, b) = body.split_at(5);
    sock.write_all(a.as_bytes()).await.unwrap();
    // Longer than the idle timeout, inside the request timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sock.write_all(b.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut sock, Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(status, 202, "{body}");
    srv.stop().await;
}

#[tokio::test]
async fn an_upgraded_websocket_is_exempt_from_both_timeouts() {
    let (srv, _dir) = start(1, 1, 0).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url("/api/v1/ws/dashboard")).await.unwrap();
    // Quiet for longer than both timeouts (the server's own pushes are
    // writes: they do not count as the client sending a request).
    let quiet_until = Instant::now() + Duration::from_millis(2500);
    while let Ok(Some(msg)) = tokio::time::timeout_at(quiet_until.into(), ws.next()).await {
        assert!(msg.is_ok(), "the WebSocket failed while quiet: {msg:?}");
    }
    ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next()).await.expect("pong in time").unwrap().unwrap();
        if let Message::Text(t) = msg {
            if serde_json::from_str::<Value>(&t).unwrap()["type"] == "pong" {
                break;
            }
        }
    }
    srv.stop().await;
}

// ---------------------------------------------------------------- slow readers

/// A server whose idle and write timeouts are 1 s.
async fn start_for_slow_readers() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.server.idle_timeout_secs = 1;
    cfg.server.write_timeout_secs = 1;
    (TestServer::start(cfg).await, dir)
}

/// Stores 500 events of 16 KiB each, so `/api/v1/activity/recent?limit=500`
/// answers about 8 MiB: far more than the socket buffers of both ends hold.
async fn fill_activity_with_big_events(base: &str) {
    let c = client();
    let pad = "x".repeat(16 * 1024);
    for batch in 0..10 {
        let events: Vec<Value> =
            (0..50).map(|i| json!({"type": "big", "data": {"n": batch * 50 + i, "pad": pad}})).collect();
        let r = post_json(&c, base, &Value::Array(events)).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
}

/// A connected socket whose receive buffer is `bytes` (the kernel doubles
/// it), so a response that is not read stops the server's writes early.
async fn connect_with_receive_buffer(addr: std::net::SocketAddr, bytes: u32) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    socket.connect(addr).await.unwrap()
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
}

/// Also a reload: the server starts with the default 30 s, and the 1 s of
/// the reload applies to the connection accepted after it.
#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_closed_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path());
    assert_eq!(cfg.server.write_timeout_secs, 30);
    let (tx, rx) = tokio::sync::watch::channel(LiveConfig::new(cfg.clone()));
    let srv = TestServer::start_with(sidewire::ServerBuilder::new(cfg.clone()).config_channel(rx)).await;
    fill_activity_with_big_events(&srv.base).await;
    let mut reloaded: Config = cfg.clone();
    reloaded.server.write_timeout_secs = 1;
    tx.send_replace(LiveConfig::new(reloaded));
    let write_timeouts = || srv.app.metrics.http_timeouts_total.with_label_values(&["response_write"]).get();
    assert_eq!(write_timeouts(), 0);
    let mut sock = connect_with_receive_buffer(srv.addr, 4096).await;
    sock.write_all(b"GET /api/v1/activity/recent?limit=500 HTTP/1.1\r\nHost: sidewire\r\n\r\n").await.unwrap();
    let sent = Instant::now();
    // Never read: the server's writes stop once the buffers are full, and
    // the write deadline (1 s from then) ends the connection.
    wait_until("the write deadline ends the connection", Duration::from_secs(6), || async { write_timeouts() == 1 })
        .await;
    let after = sent.elapsed();
    assert!(after >= Duration::from_millis(900), "closed before the write timeout: {after:?}");
    assert!(after <= Duration::from_secs(3), "write_timeout_secs = 1, closed after {after:?}");
    // The server's end is gone, with a reset (so its kernel dropped the
    // unsent rest at once): what the client holds ends well short of the
    // response.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e.kind()),
            }
        }
    })
    .await;
    assert_eq!(
        drained
            .unwrap_or_else(|_| panic!("the connection is still open after the write timeout ({} bytes)", got.len())),
        Some(std::io::ErrorKind::ConnectionReset),
        "closed with a reset, not a FIN after {} bytes",
        got.len()
    );
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{}", &head[..head.len().min(200)]);
    let whole = content_length(head).expect("a Content-Length");
    assert!(whole > 4 * 1024 * 1024, "the response is too small to fill the buffers: {whole} bytes");
    assert!(body.len() < whole, "the whole response arrived: {} of {whole} bytes", body.len());
    // Counted, and its place at the front door is free again.
    assert_eq!(
        metric(&client(), &srv.base, r#"sidewire_http_timeouts_total{phase="response_write"}"#).await,
        Some(1.0)
    );
    wait_until("the connection's slot is free", Duration::from_secs(5), || async {
        srv.app.metrics.http_open_connections.get() == 0
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn a_slow_client_that_keeps_reading_gets_the_whole_response() {
    let (srv, _dir) = start_for_slow_readers().await;
    fill_activity_with_big_events(&srv.base).await;
    let mut sock = connect_with_receive_buffer(srv.addr, 16 * 1024).await;
    sock.write_all(b"GET /api/v1/activity/recent?limit=250 HTTP/1.1\r\nHost: sidewire\r\n\r\n").await.unwrap();
    let started = Instant::now();
    // A small buffer and a pause after every read: the server's writes wait
    // for the client all along and the response (about 4 MiB) takes longer
    // than the write and idle timeouts together, but the client never
    // pauses for anywhere near either.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // (end of the head, length of the body) once the head is in.
    let mut framing: Option<(usize, usize)> = None;
    let expected = loop {
        if framing.is_none() {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let whole = content_length(&head).unwrap_or_else(|| panic!("no Content-Length: {head}"));
                framing = Some((end + 4, whole));
            }
        }
        if let Some((body_at, whole)) = framing {
            if got.len() - body_at >= whole {
                break whole;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
            Ok(Ok(n @ 1..)) => got.extend_from_slice(&buf[..n]),
            other => panic!("the connection ended after {:?} and {} bytes: {other:?}", started.elapsed(), got.len()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    assert!(took > Duration::from_secs(2), "not slow enough to matter: {took:?}");
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), expected);
    let page: Value = serde_json::from_str(body).unwrap();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(250));
    assert_eq!(srv.app.metrics.http_timeouts_total.with_label_values(&["response_write"]).get(), 0);
    // Once the response is out, the connection idles out as any other (the
    // idle clock starts when its last byte went to the kernel, so the close
    // may come while the client still reads the tail: after it, as a FIN).
    assert!(matches!(ending(&mut sock, Duration::from_secs(4)).await, Ending::Closed(_)));
    srv.stop().await;
}

// ---------------------------------------------------------------- the cap

#[tokio::test]
async fn at_the_cap_new_connections_are_refused_while_health_and_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.server.max_http_connections = 3;
    cfg.metrics.listen = "127.0.0.1:0".into();
    let srv = TestServer::start(cfg).await;
    let private = format!("http://{}", srv.metrics_addr.expect("a metrics listener"));
    let c = client();
    // Three connections fill the cap: two keep-alive HTTP, one WebSocket.
    let mut a = TcpStream::connect(srv.addr).await.unwrap();
    let mut b = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get_on(&mut a, "/healthz").await, Some(200));
    assert_eq!(get_on(&mut b, "/healthz").await, Some(200));
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url("/api/v1/ws/dashboard")).await.unwrap();
    wait_until("3 connections open", Duration::from_secs(5), || async {
        srv.app.metrics.http_open_connections.get() == 3
    })
    .await;

    // The fourth is closed at once, before any answer.
    for _ in 0..3 {
        let mut refused = TcpStream::connect(srv.addr).await.expect("the kernel still completes the handshake");
        let _ = refused.write_all(b"GET /healthz HTTP/1.1\r\nHost: sidewire\r\n\r\n").await;
        match ending(&mut refused, Duration::from_secs(2)).await {
            Ending::Closed(after) => assert!(after < Duration::from_secs(1), "closed after {after:?}"),
            other => panic!("a connection over the cap must be closed at once: {other:?}"),
        }
    }
    assert!(c.get(srv.url("/healthz")).send().await.is_err(), "no HTTP answer over the cap");
    assert_eq!(
        metric(&c, &private, r#"sidewire_http_rejected_connections_total{reason="at_capacity"}"#).await,
        Some(4.0)
    );
    assert_eq!(metric(&c, &private, "sidewire_http_open_connections").await, Some(3.0));
    assert_eq!(metric(&c, &private, "sidewire_http_max_connections").await, Some(3.0));
    // The health probe on the metrics listener answers...
    let r = get_reply(&c, &format!("{private}/healthz")).await;
    assert_eq!((r.status, r.body), (200, json!({"status": "ok"})));
    // ... and the open connections keep working.
    assert_eq!(get_on(&mut a, "/api/v1/stats").await, Some(200));
    assert_eq!(get_on(&mut b, "/readyz").await, Some(200));
    ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next()).await.expect("pong in time").unwrap().unwrap();
        if matches!(&msg, Message::Text(t) if t.contains("\"pong\"")) {
            break;
        }
    }
    // A closed WebSocket frees its place.
    ws.close(None).await.unwrap();
    drop(ws);
    wait_until("a place is free again", Duration::from_secs(5), || async {
        srv.app.metrics.http_open_connections.get() == 2
    })
    .await;
    let r = get_reply(&c, &srv.url("/healthz")).await;
    assert_eq!(r.status, 200);
    srv.stop().await;
}

// ---------------------------------------------------------------- live reload

#[tokio::test]
async fn new_timeouts_and_caps_apply_to_new_connections_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.server.idle_timeout_secs = 30;
    let (tx, rx) = tokio::sync::watch::channel(LiveConfig::new(cfg.clone()));
    let srv = TestServer::start_with(sidewire::ServerBuilder::new(cfg.clone()).config_channel(rx)).await;
    let mut before = TcpStream::connect(srv.addr).await.unwrap();
    wait_until("the first connection is accepted", Duration::from_secs(5), || async {
        srv.app.metrics.http_open_connections.get() == 1
    })
    .await;

    let mut reloaded: Config = cfg.clone();
    reloaded.server.idle_timeout_secs = 1;
    reloaded.server.max_http_connections = 2;
    tx.send_replace(LiveConfig::new(reloaded));
    let mut after = TcpStream::connect(srv.addr).await.unwrap();
    assert!(
        matches!(ending(&mut after, Duration::from_secs(3)).await, Ending::Closed(d) if d <= Duration::from_secs(2)),
        "a connection accepted after the reload has the new idle timeout"
    );
    assert_eq!(ending(&mut before, Duration::from_millis(200)).await, Ending::StillOpen, "the old one keeps its 30 s");
    // The cap of 2 is in force: one open, one more fits, the third is refused.
    let mut second = TcpStream::connect(srv.addr).await.unwrap();
    assert_eq!(get_on(&mut second, "/healthz").await, Some(200));
    let refused = || srv.app.metrics.http_rejected_connections_total.with_label_values(&["at_capacity"]).get();
    let refused_before = refused();
    let mut third = TcpStream::connect(srv.addr).await.unwrap();
    // Closed at accept, well before the 1 s idle timeout could close it.
    assert!(
        matches!(ending(&mut third, Duration::from_secs(2)).await, Ending::Closed(d) if d < Duration::from_millis(500)),
        "the third connection is refused at once"
    );
    assert_eq!(refused(), refused_before + 1, "and counted as at_capacity");
    drop(before);
    srv.stop().await;
}

/// A request refused before its body was read (here 415: the body is sent
/// after the answer could already be written) says `Connection: close`, so a
/// keep-alive client does not send its next request into a connection that
/// closes; an accepted one keeps the connection.
#[tokio::test]
async fn a_refusal_before_the_body_is_read_says_connection_close() {
    let (srv, _dir) = start(10, 30, 0).await;
    let body = json!({"type": "x"}).to_string();
    let answer = |content_type: &'static str| {
        let (addr, body) = (srv.addr, body.clone());
        async move {
            let mut sock = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/v1/ingest HTTP/1.1\r\nHost: sidewire\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await.unwrap().unwrap();
            String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
        }
    };
    let refused = answer("text/plain").await;
    assert!(refused.starts_with("http/1.1 415"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    let accepted = answer("application/json").await;
    assert!(accepted.starts_with("http/1.1 202"), "{accepted}");
    assert!(!accepted.contains("connection: close"), "{accepted}");
    srv.stop().await;
}
