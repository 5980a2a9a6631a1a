//! The dashboard WebSocket (contract section 5) against a real server, with a
//! real client (tokio-tungstenite) and, where a polite client cannot play the
//! part, a hand-written one (`common/rawws.rs`).

use crate::common::rawws;
use crate::common::*;
use futures::{SinkExt, StreamExt};
use rawws::Msg;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WS: &str = "/api/v1/ws/dashboard";
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

async fn connect(srv: &TestServer, path_and_query: &str) -> Ws {
    connect_with(srv, path_and_query, &[]).await
}

async fn connect_with(srv: &TestServer, path_and_query: &str, headers: &[(&'static str, &str)]) -> Ws {
    let mut req = srv.ws_url(path_and_query).into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    let (ws, res) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect {path_and_query}: {e}"));
    assert_eq!(res.status().as_u16(), 101);
    ws
}

/// Connects and reads the `connection_ack` and the first `stats_update`.
async fn connect_ready(srv: &TestServer, path_and_query: &str) -> (Ws, Value) {
    let mut ws = connect(srv, path_and_query).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let stats = next_json(&mut ws).await;
    assert_eq!(stats["type"], "stats_update", "{stats}");
    (ws, ack)
}

/// The next text message as JSON (pings and pongs skipped); panics on close.
async fn next_json(ws: &mut Ws) -> Value {
    try_next_json(ws, STEP).await.unwrap_or_else(|| panic!("no message within {STEP:?}"))
}

async fn try_next_json(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(m) => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("server messages are JSON")),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The next event (anything but `stats_update`).
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] != "stats_update" {
            return v;
        }
    }
}

/// Reads until the close frame: (code, reason). Data messages are skipped.
async fn expect_close(ws: &mut Ws, timeout: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close frame within {timeout:?}"),
            Ok(Some(Ok(Message::Close(Some(f))))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Some(Ok(Message::Close(None)))) => return (1005, String::new()),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

/// Reads a raw client until its close frame.
async fn raw_expect_close(ws: &mut rawws::RawWs, timeout: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next_msg()).await {
            Err(_) => panic!("no close frame within {timeout:?}"),
            Ok(Ok(Msg::Close(code, reason))) => return (code, reason),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// Closes with 1000 and expects the server to echo it.
async fn close_normally(ws: &mut Ws) {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    ws.close(Some(frame)).await.unwrap();
    assert_eq!(expect_close(ws, STEP).await, (1000, "bye".to_string()), "the server echoes the close");
}

async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Sends a `ping` and waits for its `pong`: everything sent before it has been
/// handled by the server. Returns the events that arrived meanwhile.
async fn sync(ws: &mut Ws) -> Vec<Value> {
    send_json(ws, json!({"type": "ping"})).await;
    let mut events = Vec::new();
    loop {
        let v = next_json(ws).await;
        match v["type"].as_str() {
            Some("pong") => return events,
            Some("stats_update") => {}
            _ => events.push(v),
        }
    }
}

/// The value of one metric series (`name` or `name{label="v"}`), 0 when absent.
async fn metric(c: &reqwest::Client, srv: &TestServer, series: &str) -> f64 {
    let text = c.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .unwrap_or(0.0)
}

/// Polls a metric until `ok(value)`; panics with the last value at the deadline.
async fn wait_metric(
    c: &reqwest::Client,
    srv: &TestServer,
    series: &str,
    within: Duration,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(c, srv, series).await;
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} is {v} after {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn rejected(reason: &str) -> String {
    format!("sidewire_ws_rejected_connections_total{{reason=\"{reason}\"}}")
}

fn disconnects(reason: &str) -> String {
    format!("sidewire_ws_disconnects_total{{reason=\"{reason}\"}}")
}

async fn ingest_ok(c: &reqwest::Client, srv: &TestServer, body: Value) -> Vec<u64> {
    let (status, res) = ingest(c, &srv.base, &body).await;
    assert_eq!(status, 202, "{res}");
    res["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect()
}

async fn ingest_n(c: &reqwest::Client, srv: &TestServer, n: usize, kind: &str) -> Vec<u64> {
    let batch: Vec<Value> = (0..n).map(|i| json!({"type": kind, "data": {"i": i}})).collect();
    ingest_ok(c, srv, Value::Array(batch)).await
}

/// An upgrade attempt with the raw client; must be refused.
async fn refused(srv: &TestServer, path_and_query: &str, headers: &[(&str, &str)]) -> rawws::HttpReply {
    rawws::connect(srv.addr, path_and_query, headers, None).await.unwrap().refused()
}

fn error_code(reply: &rawws::HttpReply) -> String {
    let body = reply.json();
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}")).to_string()
}

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

// ---------------------------------------------------- 1. admission checks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_without_a_dashboard_token_and_accepts_both_token_forms() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.auth.dashboard_tokens = vec!["s3cret".into(), "other".into()];
    let srv = TestServer::start(cfg).await;
    let c = client();

    for (path, headers) in [
        (WS.to_string(), vec![]),
        (format!("{WS}?token=nope"), vec![]),
        ("/ws/dashboard".to_string(), vec![("Authorization", "Bearer nope")]),
        (WS.to_string(), vec![("Authorization", "Basic czNjcmV0")]),
    ] {
        let r = refused(&srv, &path, &headers).await;
        assert_eq!(r.status, 401, "{path} {headers:?}");
        assert_eq!(error_code(&r), "unauthorized");
        assert!(r.header("upgrade").is_none(), "no upgrade on a refusal");
    }
    assert_eq!(metric(&c, &srv, &rejected("unauthorized")).await, 4.0);

    let (mut ws, _) = connect_ready(&srv, &format!("{WS}?token=s3cret")).await;
    ws.close(None).await.unwrap();
    let mut ws = connect_with(&srv, "/ws/dashboard", &[("authorization", "Bearer other")]).await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    assert_eq!(metric(&c, &srv, &rejected("unauthorized")).await, 4.0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_foreign_origin_but_not_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.server.allowed_origins = vec!["http://dash.example".into()];
    let srv = TestServer::start(cfg).await;
    let c = client();

    let r = refused(&srv, WS, &[("Origin", "http://evil.example")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(error_code(&r), "forbidden_origin");
    assert_eq!(metric(&c, &srv, &rejected("forbidden_origin")).await, 1.0);

    let (mut a, _) = connect_ready(&srv, WS).await; // tungstenite sends no Origin
    let mut b = connect_with(&srv, "/ws/dashboard", &[("origin", "http://dash.example")]).await;
    assert_eq!(next_json(&mut b).await["type"], "connection_ack");
    assert_eq!(metric(&c, &srv, &rejected("forbidden_origin")).await, 1.0);
    a.close(None).await.unwrap();
    b.close(None).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_checked_before_origin() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.auth.dashboard_tokens = vec!["s3cret".into()];
    cfg.server.allowed_origins = vec!["http://dash.example".into()];
    let srv = TestServer::start(cfg).await;
    let r = refused(&srv, WS, &[("Origin", "http://evil.example")]).await;
    assert_eq!((r.status, error_code(&r).as_str()), (401, "unauthorized"));
    let r = refused(&srv, &format!("{WS}?token=s3cret"), &[("Origin", "http://evil.example")]).await;
    assert_eq!((r.status, error_code(&r).as_str()), (403, "forbidden_origin"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_open_connections_per_ip() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.max_connections_per_ip = 2;
    let srv = TestServer::start(cfg).await;
    let c = client();

    let (mut a, _) = connect_ready(&srv, WS).await;
    let (b, _) = connect_ready(&srv, "/ws/dashboard").await;
    let r = refused(&srv, WS, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(error_code(&r), "too_many_connections");
    assert_eq!(metric(&c, &srv, &rejected("per_ip_limit")).await, 1.0);
    assert_eq!(metric(&c, &srv, &rejected("rate_limit")).await, 0.0);

    // A closed connection frees its slot.
    a.close(None).await.unwrap();
    wait_metric(&c, &srv, "sidewire_ws_active_connections", STEP, |v| v == 1.0).await;
    let (_c, _) = connect_ready(&srv, WS).await;
    drop(b);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_the_connect_rate_per_ip() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.connect_rate_per_ip_per_min = 3;
    let srv = TestServer::start(cfg).await;
    let c = client();

    for _ in 0..3 {
        let (mut ws, _) = connect_ready(&srv, WS).await;
        ws.close(None).await.unwrap();
    }
    wait_metric(&c, &srv, "sidewire_ws_active_connections", STEP, |v| v == 0.0).await;
    let r = refused(&srv, WS, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(error_code(&r), "too_many_connections");
    let retry: u64 = r.header("retry-after").expect("Retry-After on a rate limit").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(metric(&c, &srv, &rejected("rate_limit")).await, 1.0);
    assert_eq!(metric(&c, &srv, &rejected("per_ip_limit")).await, 0.0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_when_the_server_is_at_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.max_connections = 2;
    let srv = TestServer::start(cfg).await;
    let c = client();

    let (a, _) = connect_ready(&srv, WS).await;
    let (b, _) = connect_ready(&srv, WS).await;
    let r = refused(&srv, "/ws/dashboard", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(error_code(&r), "server_at_capacity");
    assert_eq!(metric(&c, &srv, &rejected("at_capacity")).await, 1.0);
    assert_eq!(metric(&c, &srv, "sidewire_ws_active_connections").await, 2.0);
    assert_eq!(metric(&c, &srv, "sidewire_ws_connections_total").await, 2.0);
    drop((a, b));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_follow_x_forwarded_for_only_when_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.max_connections_per_ip = 1;
    cfg.server.trust_forwarded_for = true;
    let srv = TestServer::start(cfg.clone()).await;
    let _a = connect_with(&srv, WS, &[("x-forwarded-for", "10.0.0.1")]).await;
    let r = refused(&srv, WS, &[("X-Forwarded-For", "10.0.0.1, 127.0.0.1")]).await;
    assert_eq!((r.status, error_code(&r).as_str()), (429, "too_many_connections"));
    let _b = connect_with(&srv, WS, &[("x-forwarded-for", "10.0.0.2, 10.0.0.1")]).await; // first hop counts
                                                                                         // IPv6 clients count per /64.
    let _c = connect_with(&srv, WS, &[("x-forwarded-for", "2001:db8:0:1::1")]).await;
    let r = refused(&srv, WS, &[("X-Forwarded-For", "2001:db8:0:1:ffff::2")]).await;
    assert_eq!(r.status, 429);
    let _d = connect_with(&srv, WS, &[("x-forwarded-for", "2001:db8:0:2::1")]).await;
    srv.stop().await;

    // Not trusted: the header is ignored, the peer (127.0.0.1) counts.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.max_connections_per_ip = 1;
    let srv = TestServer::start(cfg).await;
    let _a = connect_with(&srv, WS, &[("x-forwarded-for", "10.0.0.1")]).await;
    let r = refused(&srv, WS, &[("X-Forwarded-For", "10.0.0.2")]).await;
    assert_eq!(r.status, 429);
    srv.stop().await;
}

// --------------------------------------------------- 2. message order

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_then_stats_then_events_in_seq_order_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    ingest_ok(&c, &srv, json!([{"type": "ingestion_complete"}, {"type": "query_complete"}, {"type": "stats_update", "data": {"totalNodes": 45}}]))
        .await;

    for path in ["/api/v1/ws/dashboard", "/ws/dashboard"] {
        let mut ws = connect(&srv, path).await;
        let ack = next_json(&mut ws).await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        let data = ack["data"].as_object().unwrap();
        let mut keys: Vec<_> = data.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["connectionId", "lastSeq", "serverVersion", "statsIntervalSecs"], "{ack}");
        assert!(!data["connectionId"].as_str().unwrap().is_empty());
        assert_eq!(data["statsIntervalSecs"], 1);
        let last = metric_last_seq(&c, &srv).await;
        assert_eq!(data["lastSeq"], last);
        assert_eq!(data["serverVersion"], sidewire::VERSION);
        assert!(ack["timestamp"].as_str().unwrap().ends_with('Z'));

        let stats = next_json(&mut ws).await;
        assert_eq!(stats["type"], "stats_update", "{stats}");
        let (_, rest) = get_json(&c, &srv.url("/api/v1/stats")).await;
        let ws_stats = stats["data"].as_object().unwrap();
        let rest = rest.as_object().unwrap();
        let mut a: Vec<_> = ws_stats.keys().collect();
        let mut b: Vec<_> = rest.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "stats_update keys vs GET /api/v1/stats");
        for (k, v) in ws_stats {
            if ["uptimeSeconds", "generatedAt", "eventsPerMinute", "messagesPerMinute", "activeConnections"]
                .contains(&k.as_str())
            {
                continue;
            }
            assert_eq!(v, &rest[k], "stats_update.{k}");
        }
        assert_eq!(ws_stats["totalNodes"], 45);

        let seqs = ingest_ok(
            &c,
            &srv,
            json!([
                {"type": "error", "data": {"msg": "boom"}, "id": format!("e-{path}"), "source": "backend-1",
                 "timestamp": "2025-12-31T21:00:00+01:00"},
                {"type": "query_complete"},
                {"type": "custom.thing"}
            ]),
        )
        .await;
        let e1 = next_event(&mut ws).await;
        assert_eq!(seq(&e1), seqs[0]);
        assert_eq!(e1["type"], "error");
        assert_eq!(e1["data"], json!({"msg": "boom"}));
        assert_eq!(e1["id"], format!("e-{path}"));
        assert_eq!(e1["source"], "backend-1");
        assert_eq!(e1["timestamp"], "2025-12-31T20:00:00.000Z");
        let e2 = next_event(&mut ws).await;
        assert_eq!((seq(&e2), e2["type"].as_str()), (seqs[1], Some("query_complete")));
        assert!(e2.get("id").is_none() && e2.get("source").is_none(), "{e2}");
        let e3 = next_event(&mut ws).await;
        assert_eq!((seq(&e3), e3["type"].as_str()), (seqs[2], Some("custom.thing")));
        ws.close(None).await.unwrap();
    }
    srv.stop().await;
}

async fn metric_last_seq(c: &reqwest::Client, srv: &TestServer) -> Value {
    get_json(c, &srv.url("/api/v1/stats")).await.1["lastSeq"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_update_is_pushed_every_interval_and_after_a_gauge_change() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await; // interval 1 s
    let c = client();
    let (mut ws, _) = connect_ready(&srv, WS).await;
    let started = Instant::now();
    let v = next_json(&mut ws).await;
    assert_eq!(v["type"], "stats_update");
    assert!(started.elapsed() < Duration::from_millis(2500));
    ingest_ok(&c, &srv, json!({"type": "stats_update", "data": {"totalNodes": 7}})).await;
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let v = next_json(&mut ws).await;
        assert_eq!(v["type"], "stats_update", "gauge reports are not broadcast as events: {v}");
        if v["data"]["totalNodes"] == 7 {
            break;
        }
        assert!(Instant::now() < deadline, "no stats_update with the new gauge within 1.5 s");
    }
    srv.stop().await;
}

// ------------------------------------- 3. subscribe, ping, invalid messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_filters_ping_pong_and_invalid_messages_keep_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let (mut ws, _) = connect_ready(&srv, WS).await;

    // Only the listed types; stats_update still comes.
    send_json(&mut ws, json!({"type": "subscribe", "types": ["error", "query_complete"]})).await;
    assert!(sync(&mut ws).await.is_empty());
    let seqs =
        ingest_ok(&c, &srv, json!([{"type": "a"}, {"type": "error"}, {"type": "b"}, {"type": "query_complete"}])).await;
    assert_eq!(seq(&next_event(&mut ws).await), seqs[1]);
    assert_eq!(seq(&next_event(&mut ws).await), seqs[3]);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "stats_update" {
            break;
        }
        assert!(Instant::now() < deadline, "no stats_update while subscribed");
    }
    assert!(sync(&mut ws).await.is_empty(), "filtered events must not arrive");

    for all in [json!([]), json!(["*"]), json!(["error", "*"])] {
        send_json(&mut ws, json!({"type": "subscribe", "types": ["nothing"]})).await;
        send_json(&mut ws, json!({"type": "subscribe", "types": all})).await;
        assert!(sync(&mut ws).await.is_empty());
        let seqs = ingest_ok(&c, &srv, json!([{"type": "a"}, {"type": "error"}])).await;
        assert_eq!(seq(&next_event(&mut ws).await), seqs[0], "types {all}");
        assert_eq!(seq(&next_event(&mut ws).await), seqs[1], "types {all}");
    }

    // ping -> pong with the message shape.
    send_json(&mut ws, json!({"type": "ping"})).await;
    let pong = loop {
        let v = next_json(&mut ws).await;
        if v["type"] != "stats_update" {
            break v;
        }
    };
    assert_eq!(pong["type"], "pong");
    assert!(pong["data"].is_object() && pong["timestamp"].is_string(), "{pong}");

    // Invalid messages are counted, the connection stays open.
    let before = metric(&c, &srv, "sidewire_ws_invalid_messages_total").await;
    ws.send(Message::text("{not json")).await.unwrap();
    send_json(&mut ws, json!({"type": "bogus"})).await;
    send_json(&mut ws, json!({"no": "type"})).await;
    send_json(&mut ws, json!([1, 2])).await;
    send_json(&mut ws, json!({"type": "subscribe", "types": "error"})).await;
    send_json(&mut ws, json!({"type": "resume", "afterSeq": 1})).await; // not the first message
    ws.send(Message::Binary(Bytes::from_static(b"\x00\x01binary"))).await.unwrap();
    ws.send(Message::text("x".repeat(60 * 1024))).await.unwrap(); // big but under 64 KiB
    assert!(sync(&mut ws).await.is_empty());
    wait_metric(&c, &srv, "sidewire_ws_invalid_messages_total", STEP, |v| v == before + 8.0).await;
    let seqs = ingest_n(&c, &srv, 1, "after_invalid").await;
    assert_eq!(seq(&next_event(&mut ws).await), seqs[0]);
    close_normally(&mut ws).await;
    wait_metric(&c, &srv, &disconnects("client_close"), STEP, |v| v == 1.0).await;
    srv.stop().await;
}

/// A client message several times the socket's 256-byte read buffer (a
/// subscribe to many types, some sent in one write with the next message)
/// is read whole and applied.
#[tokio::test]
async fn client_messages_longer_than_the_read_buffer_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let (mut ws, _) = connect_ready(&srv, WS).await;
    let mut types: Vec<String> = (0..200).map(|i| format!("not_this_type_{i:03}")).collect();
    types.push("wanted".into());
    let sub = json!({"type": "subscribe", "types": types}).to_string();
    assert!(sub.len() > 8 * 256, "{} bytes", sub.len());
    // Both frames in one write: the second starts inside the first's last read.
    ws.feed(Message::text(sub)).await.unwrap();
    ws.feed(Message::text(json!({"type": "ping"}).to_string())).await.unwrap();
    ws.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "pong" {
            break;
        }
        assert!(Instant::now() < deadline, "no pong after a long subscribe");
    }
    let events = json!([{"type": "a"}, {"type": "wanted"}, {"type": "b"}, {"type": "not_this_type_199"}]);
    let seqs = ingest_ok(&c, &srv, events).await;
    assert_eq!(seq(&next_event(&mut ws).await), seqs[1]);
    assert_eq!(seq(&next_event(&mut ws).await), seqs[3]);
    assert!(sync(&mut ws).await.is_empty(), "only the subscribed types arrive");
    close_normally(&mut ws).await;
    srv.stop().await;
}

// ---------------------------------------------------------------- 4. resume

/// Ingests batches of `tick` events until `stop` is set; returns the last seq.
fn spawn_producer(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let c = client();
        let mut last = 0;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<Value> = (0..3).map(|k| json!({"type": "tick", "data": {"i": i * 3 + k}})).collect();
            let (status, body) = ingest(&c, &base, &Value::Array(batch)).await;
            assert_eq!(status, 202, "{body}");
            last = body["seqs"][2].as_u64().unwrap();
            i += 1;
        }
        last
    })
}

async fn last_seq(c: &reqwest::Client, srv: &TestServer) -> u64 {
    get_json(c, &srv.url("/api/v1/stats")).await.1["lastSeq"].as_u64().unwrap()
}

/// What a resuming client saw: events before `resume_complete`, its data, and
/// events after it, up to and including seq `until`.
struct Resumed {
    before: Vec<u64>,
    complete: Value,
    after: Vec<u64>,
}

async fn read_resume(ws: &mut Ws, stop: &AtomicBool, producer: tokio::task::JoinHandle<u64>) -> Resumed {
    let mut before = Vec::new();
    let complete = loop {
        let v = next_event(ws).await;
        if v["type"] == "resume_complete" {
            break v["data"].clone();
        }
        before.push(seq(&v));
    };
    let mut after = Vec::new();
    // Some live events while the producer runs, then stop it and read the rest.
    while after.len() < 30 {
        after.push(seq(&next_event(ws).await));
    }
    stop.store(true, Ordering::Relaxed);
    let until = tokio::time::timeout(STEP, producer).await.expect("producer stops").unwrap();
    while after.last().is_none_or(|s| *s < until) {
        after.push(seq(&next_event(ws).await));
    }
    // And nothing else is pending.
    assert!(sync(ws).await.is_empty());
    Resumed { before, complete, after }
}

fn assert_consecutive(seqs: &[u64], from: u64, what: &str) {
    let want: Vec<u64> = (from..from + seqs.len() as u64).collect();
    assert_eq!(seqs, &want[..], "{what}: not consecutive from {from}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_after_seq_query_has_no_gap_and_no_duplicate_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    ingest_n(&c, &srv, 100, "old").await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = spawn_producer(srv.base.clone(), stop.clone());
    while last_seq(&c, &srv).await < 130 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (mut ws, ack) = connect_ready(&srv, &format!("{WS}?afterSeq=40")).await;
    let at_connect = ack["data"]["lastSeq"].as_u64().unwrap();
    let r = read_resume(&mut ws, &stop, producer).await;

    // Replay first, oldest first, from 41; then live, continuing exactly.
    assert_consecutive(&r.before, 41, "replay");
    let upto = *r.before.last().unwrap();
    assert!(upto >= at_connect, "replay reaches at least the lastSeq of the ack ({upto} < {at_connect})");
    assert_eq!(r.complete["replayed"], r.before.len(), "{}", r.complete);
    assert_eq!(r.complete["truncated"], false);
    let m = r.complete["lastSeq"].as_u64().unwrap();
    assert!(m >= upto && m <= *r.after.last().unwrap(), "resume_complete.lastSeq {m}, replayed up to {upto}");
    assert_consecutive(&r.after, upto + 1, "live after replay");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_a_first_message_has_no_gap_and_no_duplicate_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    ingest_n(&c, &srv, 100, "old").await;

    // Resume right away, and after live events have already gone out.
    for delay_ms in [0u64, 300] {
        let stop = Arc::new(AtomicBool::new(false));
        let producer = spawn_producer(srv.base.clone(), stop.clone());
        let start = last_seq(&c, &srv).await;
        while last_seq(&c, &srv).await < start + 30 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let after_seq = start - 60;
        let mut ws = connect(&srv, WS).await;
        let ack = next_json(&mut ws).await;
        assert_eq!(ack["type"], "connection_ack");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        send_json(&mut ws, json!({"type": "resume", "afterSeq": after_seq})).await;
        let r = read_resume(&mut ws, &stop, producer).await;

        // Before resume_complete: possibly live events that went out before
        // the resume was read (seq > the replayed ones), then the replay from
        // after_seq + 1. Together they are one unbroken range, no duplicate.
        let first = after_seq + 1;
        let split = r
            .before
            .iter()
            .position(|s| *s == first)
            .unwrap_or_else(|| panic!("no replay from {first}: {:?}", r.before));
        let (early_live, replay) = r.before.split_at(split);
        assert_consecutive(replay, first, "replay");
        let upto = *replay.last().unwrap();
        assert_eq!(r.complete["replayed"], replay.len(), "{}", r.complete);
        assert_eq!(r.complete["truncated"], false);
        assert!(r.complete["lastSeq"].as_u64().unwrap() >= upto);
        if !early_live.is_empty() {
            assert_consecutive(early_live, upto + 1, "live events sent before the resume was read");
        }
        let mut all: Vec<u64> = r.before.iter().chain(&r.after).copied().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "duplicates across replay and live");
        assert_consecutive(&all, first, "replay + live");
        assert_consecutive(&r.after, r.before.iter().max().unwrap() + 1, "live after resume_complete");
        ws.close(None).await.unwrap();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_the_newest_max_replay_events_and_says_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.max_replay = 20;
    let srv = TestServer::start(cfg).await;
    let c = client();
    ingest_n(&c, &srv, 100, "old").await; // seqs 1..=100

    // afterSeq as a function of the current last seq: far behind, one more
    // than max_replay missing, exactly max_replay missing, a few, none, ahead.
    let cases: [fn(u64) -> u64; 6] = [|_| 10, |l| l - 21, |l| l - 20, |l| l - 5, |l| l, |l| l + 400];
    for after_of in cases {
        for via_message in [false, true] {
            // Each round ingests one live event: recompute from the current last seq.
            let last = last_seq(&c, &srv).await;
            let after = after_of(last);
            let missing = last.saturating_sub(after) as usize;
            let replayed = missing.min(20);
            let truncated = missing > 20;
            let first = last + 1 - replayed as u64;
            let mut ws = if via_message {
                let mut ws = connect(&srv, WS).await;
                send_json(&mut ws, json!({"type": "resume", "afterSeq": after})).await;
                ws
            } else {
                connect(&srv, &format!("{WS}?afterSeq={after}")).await
            };
            let mut got = Vec::new();
            let complete = loop {
                let v = next_event(&mut ws).await;
                match v["type"].as_str() {
                    Some("connection_ack") => continue,
                    Some("resume_complete") => break v["data"].clone(),
                    _ => got.push(seq(&v)),
                }
            };
            let what = format!("afterSeq={after} via_message={via_message} last={last}");
            assert_consecutive(&got, first, &what);
            assert_eq!(got.len(), replayed, "{what}");
            assert_eq!(complete, json!({"replayed": replayed, "lastSeq": last, "truncated": truncated}), "{what}");
            // Live events continue right after.
            let seqs = ingest_n(&c, &srv, 1, "live").await;
            assert_eq!(seq(&next_event(&mut ws).await), seqs[0], "{what}");
            ws.close(None).await.unwrap();
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_after_seq_is_an_invalid_query() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let r = refused(&srv, &format!("{WS}?afterSeq=-1"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), "invalid_query");
    srv.stop().await;
}

// ---------------------------------------------------------- 5. slow consumer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_and_others_get_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.send_queue_len = 16;
    let srv = TestServer::start(cfg).await;
    let c = client();

    // The slow client: a small receive window, and it reads nothing for now.
    let mut slow = rawws::connect(srv.addr, WS, &[], Some(4096)).await.unwrap().upgraded();
    // The healthy client reads everything in a task.
    let (mut healthy, _) = connect_ready(&srv, WS).await;
    const N: usize = 200;
    const PER_REQUEST: usize = 4;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::with_capacity(N);
        while seqs.len() < N {
            seqs.push(seq(&next_event(&mut healthy).await));
        }
        (healthy, seqs)
    });

    // 32 KiB per event, 6.5 MB in all: more than what the server's socket (send
    // buffer autotuned up to tcp_wmem's max, 4 MiB), tungstenite's write
    // buffer (a message or so) and 16 queued messages hold. Not much more:
    // the slow client must start reading within the server's 5 s attempt to
    // send it the close frame.
    let blob = "x".repeat(32 * 1024);
    let mut expected = Vec::new();
    for r in 0..N / PER_REQUEST {
        let batch: Vec<Value> = (0..PER_REQUEST)
            .map(|k| json!({"type": "bulk", "data": {"i": r * PER_REQUEST + k, "blob": blob}}))
            .collect();
        expected.extend(ingest_ok(&c, &srv, Value::Array(batch)).await);
    }
    // Now the slow client reads what was buffered for it, then the close.
    let (code, reason) = raw_expect_close(&mut slow, STEP).await;
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    let (mut healthy, seqs) =
        tokio::time::timeout(Duration::from_secs(30), reader).await.expect("healthy client keeps up").unwrap();
    assert_eq!(seqs, expected, "the healthy client gets every event, in order");
    wait_metric(&c, &srv, &disconnects("slow_consumer"), STEP, |v| v == 1.0).await;

    // The healthy one is still open.
    let seqs = ingest_n(&c, &srv, 1, "after").await;
    assert_eq!(seq(&next_event(&mut healthy).await), seqs[0]);
    assert_eq!(metric(&c, &srv, "sidewire_ws_active_connections").await, 1.0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_client_that_does_not_read_is_closed_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.send_queue_len = 16;
    cfg.ws.ping_interval_secs = 1;
    cfg.ws.pong_timeout_secs = 1;
    let srv = TestServer::start(cfg).await;
    let c = client();
    let blob = "x".repeat(8 * 1024);
    for r in 0..10 {
        let batch: Vec<Value> =
            (0..60).map(|k| json!({"type": "bulk", "data": {"i": r * 60 + k, "blob": blob}})).collect();
        ingest_ok(&c, &srv, Value::Array(batch)).await;
    }
    // 600 events of 8 KiB to replay through a queue of 16: a client that
    // reads gets them all (waiting for queue room is not being slow)...
    let (mut ws, _) = connect_ready(&srv, &format!("{WS}?afterSeq=0")).await;
    let mut got = Vec::new();
    loop {
        let v = next_event(&mut ws).await;
        if v["type"] == "resume_complete" {
            assert_eq!(v["data"], json!({"replayed": 600, "lastSeq": 600, "truncated": false}));
            break;
        }
        got.push(seq(&v));
    }
    assert_consecutive(&got, 1, "replay through a small queue");
    close_normally(&mut ws).await;

    // ...one that reads nothing is closed: the replay does not wait forever.
    let mut slow = rawws::connect(srv.addr, &format!("{WS}?afterSeq=0"), &[], Some(4096)).await.unwrap().upgraded();
    let started = Instant::now();
    wait_metric(&c, &srv, &disconnects("slow_consumer"), Duration::from_secs(15), |v| v == 1.0).await;
    let took = started.elapsed();
    // pong_timeout_secs without progress, plus the writer's 5 s try to send the close.
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    assert_eq!(metric(&c, &srv, "sidewire_ws_active_connections").await, 0.0);
    // What was buffered for it ends with the close frame or a bare EOF.
    let _ = tokio::time::timeout(STEP, async { while slow.read_frame().await.ok().flatten().is_some() {} }).await;
    srv.stop().await;
}

// --------------------------------------------------------- 6. frame size

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_64_kib_closes_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();

    let (mut ws, _) = connect_ready(&srv, WS).await;
    ws.send(Message::text("x".repeat(64 * 1024 + 1))).await.unwrap();
    let (code, _) = expect_close(&mut ws, STEP).await;
    assert_eq!(code, u16::from(CloseCode::Size));

    // The same with a binary frame from the raw client.
    let mut raw = rawws::connect(srv.addr, "/ws/dashboard", &[], None).await.unwrap().upgraded();
    raw.send_frame(rawws::OP_BINARY, &vec![7u8; 100 * 1024]).await.unwrap();
    let (code, _) = raw_expect_close(&mut raw, STEP).await;
    assert_eq!(code, 1009);
    wait_metric(&c, &srv, "sidewire_ws_active_connections", STEP, |v| v == 0.0).await;
    srv.stop().await;
}

// ----------------------------------------------------------- 7. heartbeat

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_pings_is_closed_and_one_that_answers_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.ping_interval_secs = 1;
    cfg.ws.pong_timeout_secs = 1;
    let srv = TestServer::start(cfg).await;
    let c = client();

    let mut deaf = rawws::connect(srv.addr, WS, &[], None).await.unwrap().upgraded();
    let (mut polite, _) = connect_ready(&srv, WS).await;
    // tungstenite answers pings while it is being read.
    let polite_task = tokio::spawn(async move {
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(4500);
        loop {
            match tokio::time::timeout_at(until, polite.next()).await {
                Err(_) => return (polite, pings),
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Text(_)))) => {}
                Ok(other) => panic!("the polite client got {other:?}"),
            }
        }
    });

    let started = Instant::now();
    let (code, reason) = raw_expect_close(&mut deaf, Duration::from_secs(6)).await;
    assert_eq!((code, reason.as_str()), (1008, "heartbeat timeout"));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(6), "closed after {took:?}");
    assert!(deaf.pings_seen >= 1);
    wait_metric(&c, &srv, &disconnects("heartbeat_timeout"), STEP, |v| v == 1.0).await;

    let (mut polite, pings) = polite_task.await.unwrap();
    assert!(pings >= 3, "pings seen by the polite client: {pings}");
    send_json(&mut polite, json!({"type": "ping"})).await;
    assert!(sync(&mut polite).await.is_empty());
    assert_eq!(metric(&c, &srv, &disconnects("heartbeat_timeout")).await, 1.0);
    assert_eq!(metric(&c, &srv, "sidewire_ws_active_connections").await, 1.0);
    srv.stop().await;
}

// ------------------------------------------------------------ 8. shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_every_client_with_1001() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let app = srv.app.clone();
    let mut clients = Vec::new();
    for path in [WS, "/ws/dashboard", &format!("{WS}?afterSeq=0")] {
        clients.push(connect_ready(&srv, path).await.0);
    }
    let mut raw = rawws::connect(srv.addr, WS, &[], None).await.unwrap().upgraded();
    assert_eq!(raw.next_json(STEP).await["type"], "connection_ack");

    let stop = tokio::spawn(srv.stop());
    for ws in &mut clients {
        let (code, _) = expect_close(ws, STEP).await;
        assert_eq!(code, 1001);
    }
    assert_eq!(raw_expect_close(&mut raw, STEP).await.0, 1001);
    tokio::time::timeout(Duration::from_secs(20), stop).await.expect("server stops").unwrap();
    assert_eq!(app.metrics.ws_disconnects_total.with_label_values(&["shutdown"]).get(), 4);
    assert_eq!(app.metrics.ws_active_connections.get(), 0);
}

// ------------------------------------------------------------ 9. fan-out

/// A burst bigger than what a connection takes from the hub in one go
/// reaches the dashboard whole. On a one-thread runtime the server
/// publishes a whole 1,000-event request before the dashboard's task runs
/// again, so it finds all of them waiting (every 257th went missing once).
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_a_thousand_events_reaches_a_dashboard_whole() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let (mut ws, _) = connect_ready(&srv, WS).await;
    let mut expected = Vec::new();
    for _ in 0..3 {
        expected.extend(ingest_n(&c, &srv, 1000, "burst").await);
    }
    let mut seen = Vec::with_capacity(expected.len());
    // A bounded wait: stats updates keep coming whether or not events do.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < expected.len() && tokio::time::Instant::now() < deadline {
        match try_next_json(&mut ws, Duration::from_secs(10)).await {
            Some(v) if v["type"] == "burst" => seen.push(seq(&v)),
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(seen, expected, "every event of the bursts, once, in order");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_receive_the_same_thousand_events_in_order() {
    const CLIENTS: usize = 500;
    const EVENTS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.max_connections_per_ip = CLIENTS + 10;
    cfg.ws.connect_rate_per_ip_per_min = (CLIENTS + 10) as u32;
    cfg.stats.interval_secs = 5;
    let srv = Arc::new(TestServer::start(cfg).await);
    let c = client();
    let started = Instant::now();

    // Connect in waves; a client is subscribed once its ack arrived.
    let mut ready = Vec::with_capacity(CLIENTS);
    for wave in 0..CLIENTS / 50 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            let srv = srv.clone();
            let path = if (wave * 50 + i) % 2 == 0 { WS } else { "/ws/dashboard" };
            set.spawn(async move {
                let mut ws = connect(&srv, path).await;
                assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
                ws
            });
        }
        while let Some(ws) = set.join_next().await {
            ready.push(ws.unwrap());
        }
    }
    assert_eq!(metric(&c, &srv, "sidewire_ws_active_connections").await, CLIENTS as f64);
    let connected = started.elapsed();

    let mut readers = tokio::task::JoinSet::new();
    for mut ws in ready {
        readers.spawn(async move {
            let mut seqs = Vec::with_capacity(EVENTS);
            while seqs.len() < EVENTS {
                match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] != "stats_update" {
                            seqs.push(seq(&v));
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    other => return Err(format!("after {} events: {other:?}", seqs.len())),
                }
            }
            let _ = ws.close(None).await;
            Ok(seqs)
        });
    }
    let mut expected = Vec::with_capacity(EVENTS);
    for b in 0..EVENTS / 100 {
        let batch: Vec<Value> = (0..100).map(|i| json!({"type": "fanout", "data": {"n": b * 100 + i}})).collect();
        expected.extend(ingest_ok(&c, &srv, Value::Array(batch)).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut done = 0;
    while let Some(r) =
        tokio::time::timeout_at(deadline, readers.join_next()).await.expect("all clients finish within 120 s")
    {
        let seqs = r.unwrap().unwrap_or_else(|e| panic!("a client failed: {e}"));
        assert_eq!(seqs, expected, "a client missed or reordered events");
        done += 1;
    }
    assert_eq!(done, CLIENTS);
    eprintln!("{CLIENTS} clients connected in {connected:?}, all events delivered after {:?}", started.elapsed());
    assert_eq!(metric(&c, &srv, &disconnects("slow_consumer")).await, 0.0);
    wait_metric(&c, &srv, "sidewire_ws_active_connections", STEP, |v| v == 0.0).await;
    Arc::into_inner(srv).expect("no other handle").stop().await;
}

// ------------------------------------------ 10. active connections gauge

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_connections_return_to_zero_even_after_abrupt_drops() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();

    let (mut polite, _) = connect_ready(&srv, WS).await;
    let (rude, _) = connect_ready(&srv, WS).await;
    let mut reset = rawws::connect(srv.addr, WS, &[], None).await.unwrap().upgraded();
    assert_eq!(reset.next_json(STEP).await["type"], "connection_ack");
    let mut fin = rawws::connect(srv.addr, "/ws/dashboard", &[], None).await.unwrap().upgraded();
    assert_eq!(fin.next_json(STEP).await["type"], "connection_ack");
    wait_metric(&c, &srv, "sidewire_ws_active_connections", STEP, |v| v == 4.0).await;
    assert_eq!(get_json(&c, &srv.url("/api/v1/stats")).await.1["activeConnections"], 4);

    close_normally(&mut polite).await;
    drop(rude); // TCP FIN without a close frame
    reset.reset(); // TCP RST
    fin.stream.shutdown().await.unwrap(); // half-close, no close frame
                                          // The slots must be released promptly, not after some internal timeout.
    let t = Instant::now();
    wait_metric(&c, &srv, "sidewire_ws_active_connections", Duration::from_secs(3), |v| v == 0.0).await;
    eprintln!("all four released after {:?}", t.elapsed());
    assert_eq!(get_json(&c, &srv.url("/api/v1/stats")).await.1["activeConnections"], 0);
    assert_eq!(metric(&c, &srv, "sidewire_ws_connections_total").await, 4.0);
    let ends: f64 = {
        let mut n = 0.0;
        for r in ["client_close", "error", "slow_consumer", "heartbeat_timeout", "shutdown"] {
            n += metric(&c, &srv, &disconnects(r)).await;
        }
        n
    };
    assert_eq!(ends, 4.0);
    assert!(metric(&c, &srv, &disconnects("client_close")).await >= 1.0);

    // Per-IP slots were released too: a new connection is admitted.
    let (_again, _) = connect_ready(&srv, WS).await;
    drop(fin);
    srv.stop().await;
}
