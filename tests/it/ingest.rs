//! POST /api/v1/ingest against a real server (contract sections 1-2), the
//! error bodies of sections 2-4, and concurrent producers.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn accepts_a_batch_and_reports_seqs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let (status, body) =
        ingest(&c, &srv.base, &json!([{"type": "a"}, {"type": "b", "id": "x1"}, {"type": "c", "id": "x1"}])).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": 2, "duplicates": 1, "seqs": [1, 2, 2]}));
    srv.stop().await;
}

#[tokio::test]
async fn single_object_and_ndjson_bodies_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let r = post_json(&c, &srv.base, &json!({"type": "ingestion_complete", "data": {"file": "a.pdf"}})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body, json!({"accepted": 1, "duplicates": 0, "seqs": [1]}));
    // NDJSON: blank lines are skipped, a charset parameter is fine.
    let nd = "{\"type\":\"a\"}\n\n{\"type\":\"b\",\"id\":\"n-1\"}\r\n{\"type\":\"c\"}\n";
    let r = post_ingest(&c, &srv.base, Some("application/x-ndjson; charset=utf-8"), None, nd).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body, json!({"accepted": 3, "duplicates": 0, "seqs": [2, 3, 4]}));
    let r = post_ingest(&c, &srv.base, Some("application/json; charset=utf-8"), None, r#"[{"type":"d"}]"#).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["seqs"], json!([5]));
    let s = stats_of(&c, &srv.base).await;
    assert_eq!((s["eventsTotal"].as_u64(), s["lastSeq"].as_u64()), (Some(5), Some(5)));
    srv.stop().await;
}

#[tokio::test]
async fn stored_event_shape_and_utc_millisecond_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let r = post_json(
        &c,
        &srv.base,
        &json!([
            {"type": "ingestion_complete", "data": {"file": "r.pdf", "nodesCreated": 12},
             "timestamp": "2025-12-31T22:00:00.123456+02:00", "id": "ingest-7f3a", "source": "backend-1"},
            {"type": "query_complete", "timestamp": "2025-12-31T20:00:00Z"},
            {"type": "plain"}
        ]),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let before = chrono::Utc::now();
    let items = activity_all(&c, &srv.base, "", 50).await;
    assert_eq!(seqs_of(&items), vec![3, 2, 1]);
    assert_eq!(
        items[2],
        json!({"type": "ingestion_complete", "data": {"file": "r.pdf", "nodesCreated": 12},
               "timestamp": "2025-12-31T20:00:00.123Z", "seq": 1, "id": "ingest-7f3a", "source": "backend-1"})
    );
    assert_eq!(
        items[1],
        json!({"type": "query_complete", "data": {}, "timestamp": "2025-12-31T20:00:00.000Z", "seq": 2})
    );
    // No timestamp: the receive time, in the same normalized form.
    let ts = items[0]["timestamp"].as_str().unwrap();
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    let t = chrono::DateTime::parse_from_rfc3339(ts).unwrap();
    assert!((before - t.with_timezone(&chrono::Utc)).num_seconds().abs() < 60, "{ts}");
    assert_eq!(items[0].as_object().unwrap().len(), 4, "no id/source keys when absent: {}", items[0]);
    srv.stop().await;
}

// ---------------------------------------------------------------- 400s

#[tokio::test]
async fn invalid_json_has_no_index_but_a_bad_ndjson_line_does() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    for body in [r#"{"type": "a""#, r#"{"type":"a"} {"type":"b"}"#, "not json", r#"[{"type":"a"},]"#, ""] {
        let r = post_ingest(&c, &srv.base, Some("application/json"), None, body).await;
        assert_reply_error(&r, 400, "invalid_json", None);
    }
    let nd = "{\"type\":\"a\"}\n\n{\"type\": broken\n{\"type\":\"c\"}\n";
    let r = post_ingest(&c, &srv.base, Some("application/x-ndjson"), None, nd).await;
    assert_reply_error(&r, 400, "invalid_json", Some(2));
    let r = post_ingest(&c, &srv.base, Some("application/x-ndjson"), None, "[{\"type\":\"a\"}\n").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"]["index"], json!(0), "{}", r.text);
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["eventsTotal"], json!(0));
    srv.stop().await;
}

#[tokio::test]
async fn every_event_rule_is_an_invalid_event_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let mut deep = json!(1);
    for _ in 0..32 {
        deep = json!([deep]);
    }
    // `data` is level 1; 31 more nested arrays is level 32: fine. One more is not.
    let mut ok_deep = json!(1);
    for _ in 0..31 {
        ok_deep = json!([ok_deep]);
    }
    let bad: Vec<(&str, Value)> = vec![
        ("type missing", json!({"data": {}})),
        ("type uppercase", json!({"type": "Bad"})),
        ("type starts with digit", json!({"type": "1a"})),
        ("type empty", json!({"type": ""})),
        ("type too long", json!({"type": format!("a{}", "b".repeat(64))})),
        ("type with space", json!({"type": "a b"})),
        ("type not a string", json!({"type": 5})),
        ("unknown field", json!({"tpye": "a", "type": "a"})),
        ("data not an object", json!({"type": "a", "data": [1]})),
        ("data a string", json!({"type": "a", "data": "x"})),
        ("data too deep", json!({"type": "a", "data": {"x": deep}})),
        ("data too big", json!({"type": "a", "data": {"x": "y".repeat(64 * 1024)}})),
        ("timestamp not rfc3339", json!({"type": "a", "timestamp": "yesterday"})),
        ("timestamp a number", json!({"type": "a", "timestamp": 1767211200})),
        ("id with space", json!({"type": "a", "id": "a b"})),
        ("id empty", json!({"type": "a", "id": ""})),
        ("id too long", json!({"type": "a", "id": "x".repeat(129)})),
        ("id not ascii", json!({"type": "a", "id": "é"})),
        ("id a number", json!({"type": "a", "id": 7})),
        ("source too long", json!({"type": "a", "source": "s".repeat(65)})),
        ("source with tab", json!({"type": "a", "source": "a\tb"})),
        ("event not an object", json!("a")),
        ("gauge name invalid", json!({"type": "stats_update", "data": {"1bad": 3}})),
    ];
    for (what, ev) in &bad {
        let body = json!([{"type": "ok"}, {"type": "ok2"}, ev, {"type": "ok3"}]);
        let r = post_json(&c, &srv.base, &body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        assert_reply_error(&r, 400, "invalid_event", Some(2));
        assert!(r.body["error"]["message"].as_str().unwrap().len() > 5, "{what}");
        // A single event is index 0.
        if ev.is_object() {
            let r = post_json(&c, &srv.base, ev).await;
            assert_reply_error(&r, 400, "invalid_event", Some(0));
        }
    }
    // The limits themselves are fine.
    let good = json!([
        {"type": format!("a{}", "b".repeat(63))},
        {"type": "a.b:c-d_e9"},
        {"type": "a", "id": "x".repeat(128), "source": "s".repeat(64)},
        {"type": "a", "id": "!~", "source": "~"},
        {"type": "a", "data": {"x": ok_deep}},
        {"type": "a", "data": {"x": "y".repeat(60 * 1024)}},
    ]);
    let r = post_json(&c, &srv.base, &good).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["accepted"], json!(6));
    // A body that is neither an object nor an array.
    for body in ["42", "\"a\"", "null", "true"] {
        let r = post_ingest(&c, &srv.base, Some("application/json"), None, body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.body["error"]["code"], json!("invalid_event"), "{body}");
    }
    // Batches of scalars: the first bad one is blamed.
    let r = post_json(&c, &srv.base, &json!([{"type": "a"}, 1, 2])).await;
    assert_reply_error(&r, 400, "invalid_event", Some(1));
    // NDJSON: the index is the line.
    let nd = "{\"type\":\"a\"}\n{\"type\":\"b\"}\n\n{\"type\":\"Nope\"}\n";
    let r = post_ingest(&c, &srv.base, Some("application/x-ndjson"), None, nd).await;
    assert_reply_error(&r, 400, "invalid_event", Some(3));
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["eventsTotal"], json!(6), "only the good batch counted");
    srv.stop().await;
}

#[tokio::test]
async fn empty_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let r = post_ingest(&c, &srv.base, Some("application/json"), None, "[]").await;
    assert_reply_error(&r, 400, "empty_batch", None);
    for nd in ["", "\n", "\n \n\r\n"] {
        let r = post_ingest(&c, &srv.base, Some("application/x-ndjson"), None, nd).await;
        assert_reply_error(&r, 400, "empty_batch", None);
    }
    srv.stop().await;
}

#[tokio::test]
async fn server_only_types_are_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    for t in ["connection_ack", "pong", "resume_complete"] {
        let r = post_json(&c, &srv.base, &json!([{"type": "a"}, {"type": t}])).await;
        assert_reply_error(&r, 400, "reserved_type", Some(1));
        let r = post_json(&c, &srv.base, &json!({"type": t})).await;
        assert_reply_error(&r, 400, "reserved_type", Some(0));
    }
    let nd = "{\"type\":\"a\"}\n{\"type\":\"pong\"}\n";
    let r = post_ingest(&c, &srv.base, Some("application/x-ndjson"), None, nd).await;
    assert_reply_error(&r, 400, "reserved_type", Some(1));
    // Types that only look alike are fine.
    let r = post_json(&c, &srv.base, &json!([{"type": "ping"}, {"type": "pong2"}, {"type": "error"}])).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(3));
    srv.stop().await;
}

#[tokio::test]
async fn gauges_named_like_stats_or_counters_are_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    for name in
        ["eventsTotal", "lastSeq", "activeConnections", "generatedAt", "filesProcessed", "queriesCompleted", "errors"]
    {
        let body = json!([{"type": "a"}, {"type": "stats_update", "data": {"totalNodes": 1, name: 5}}]);
        let r = post_json(&c, &srv.base, &body).await;
        assert_reply_error(&r, 400, "reserved_stat", Some(1));
    }
    // Non-numeric fields are ignored, also under reserved names.
    let r = post_json(
        &c,
        &srv.base,
        &json!({"type": "stats_update", "data": {"totalNodes": 45, "eventsTotal": "x", "note": "hi"}}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["totalNodes"], json!(45));
    assert_eq!(s["eventsTotal"], json!(1));
    assert!(s.get("note").is_none(), "{s}");
    // A custom counter name is reserved as well.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir2.path());
    cfg.stats.counters = Some(vec![sidewire::config::CounterRule {
        name: "uploads".into(),
        on: "upload".into(),
        add: None,
        default: 1.0,
    }]);
    let srv2 = TestServer::start(cfg).await;
    let r = post_json(&c, &srv2.base, &json!({"type": "stats_update", "data": {"uploads": 3}})).await;
    assert_reply_error(&r, 400, "reserved_stat", Some(0));
    // ... while the default counters are not, since `counters` replaces them.
    let r = post_json(&c, &srv2.base, &json!({"type": "stats_update", "data": {"filesProcessed": 3}})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    srv2.stop().await;
    srv.stop().await;
}

// ---------------------------------------------------------------- 401

#[tokio::test]
async fn ingest_tokens_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.auth.ingest_tokens = vec!["tok-alpha".into(), "tok-beta".into()];
    let srv = TestServer::start(cfg).await;
    let c = client();
    let ev = r#"{"type":"a"}"#;
    let refused = [
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some("Bearer wrong"),
        Some("Bearer tok-alph"),   // a prefix
        Some("Bearer tok-alphaa"), // an extension
        Some("Bearer tok-alpha,tok-beta"),
        Some("Basic tok-alpha"),
        Some("Basic dG9rLWFscGhhOg=="), // base64("tok-alpha:")
        Some("tok-alpha"),
        Some("Token tok-alpha"),
    ];
    for auth in refused {
        let r = post_ingest(&c, &srv.base, Some("application/json"), auth, ev).await;
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text);
        assert_reply_error(&r, 401, "unauthorized", None);
    }
    // Auth comes before anything else: a bad body without a token is still 401.
    let r = post_ingest(&c, &srv.base, Some("text/plain"), None, "junk").await;
    assert_reply_error(&r, 401, "unauthorized", None);
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(0));
    for (auth, seq) in [("Bearer tok-alpha", 1), ("Bearer tok-beta", 2)] {
        let r = post_ingest(&c, &srv.base, Some("application/json"), Some(auth), ev).await;
        assert_eq!(r.status, 202, "{auth}: {}", r.text);
        assert_eq!(r.body["seqs"], json!([seq]));
    }
    srv.stop().await;
}

// ---------------------------------------------------------------- 413

#[tokio::test]
async fn bodies_and_batches_over_their_limits_are_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ingest.max_body_bytes = 4096;
    cfg.ingest.max_batch = 5;
    let srv = TestServer::start(cfg).await;
    let c = client();
    // Body over max_body_bytes (with Content-Length), even if valid.
    let big = json!({"type": "a", "data": {"x": "y".repeat(5000)}}).to_string();
    let r = post_ingest(&c, &srv.base, Some("application/json"), None, big).await;
    assert_reply_error(&r, 413, "payload_too_large", None);
    // Right at the limit it is fine.
    let mut exact = json!({"type": "a", "data": {"x": ""}}).to_string();
    let pad = 4096 - exact.len();
    exact = json!({"type": "a", "data": {"x": "y".repeat(pad)}}).to_string();
    assert_eq!(exact.len(), 4096);
    let r = post_ingest(&c, &srv.base, Some("application/json"), None, exact).await;
    assert_eq!(r.status, 202, "{}", r.text);
    // Batch over max_batch, in both formats.
    let six: Vec<Value> = (0..6).map(|i| json!({"type": "b", "id": format!("b{i}")})).collect();
    let r = post_json(&c, &srv.base, &Value::Array(six.clone())).await;
    assert_reply_error(&r, 413, "payload_too_large", None);
    let nd: String = six.iter().map(|e| format!("{e}\n")).collect();
    let r = post_ingest(&c, &srv.base, Some("application/x-ndjson"), None, nd).await;
    assert_reply_error(&r, 413, "payload_too_large", None);
    let r = post_json(&c, &srv.base, &Value::Array(six[..5].to_vec())).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["eventsTotal"], json!(6));
    srv.stop().await;
}

/// Reads an HTTP/1.1 response head from `sock` (and whatever body follows
/// within `Content-Length`), giving up at `deadline`.
async fn read_response(sock: &mut tokio::net::tcp::OwnedReadHalf, deadline: Instant) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let n = match tokio::time::timeout(left, sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

#[tokio::test]
async fn a_chunked_body_much_larger_than_the_limit_is_refused_early() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ingest.max_body_bytes = 64 * 1024;
    let srv = TestServer::start(cfg).await;
    let sock = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    // No Content-Length: the server only learns the size by reading.
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        srv.addr
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    const TOTAL: usize = 512 * 1024 * 1024; // 8192 x the limit
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        // A JSON array that never ends: `[{"type":"a"},{"type":"a"},...`
        let unit = r#"{"type":"a","data":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}},"#;
        let mut payload = String::from("[");
        while payload.len() < 60 * 1024 {
            payload.push_str(unit);
        }
        let chunk = format!("{:x}\r\n{payload}\r\n", payload.len());
        while w.load(std::sync::atomic::Ordering::Relaxed) < TOTAL {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                return; // the server closed: expected once it refused
            }
            w.fetch_add(payload.len(), std::sync::atomic::Ordering::Relaxed);
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    let started = Instant::now();
    let got = read_response(&mut rd, Instant::now() + Duration::from_secs(30)).await;
    let sent_at_answer = written.load(std::sync::atomic::Ordering::Relaxed);
    writer.abort();
    let (status, text) = got.expect("an HTTP response before the body ended");
    assert_eq!(status, 413, "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or(Value::Null);
    assert_error(status, &body, 413, "payload_too_large", None);
    // Answered long before the client could have sent everything: the server
    // stopped reading near the limit instead of taking it all in.
    assert!(sent_at_answer < TOTAL / 8, "client had sent {sent_at_answer} bytes before the 413");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The server is fine afterwards and counted nothing.
    let c = client();
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["eventsTotal"], json!(0));
    srv.stop().await;
}

// ---------------------------------------------------------------- 415, 404, query

#[tokio::test]
async fn other_content_types_are_415() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    for ct in [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/jsonl",
    ] {
        let r = post_ingest(&c, &srv.base, Some(ct), None, r#"{"type":"a"}"#).await;
        assert_reply_error(&r, 415, "unsupported_media_type", None);
    }
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(0));
    srv.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_with_the_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    for path in
        ["/nope", "/api/v1/nope", "/api/v2/ingest", "/api/v1/ingest/extra", "/api/v1/activity", "/api/v1/stats/x"]
    {
        let r = get_reply(&c, &srv.url(path)).await;
        assert_reply_error(&r, 404, "not_found", None);
    }
    let r = Reply::from(c.post(srv.url("/api/v1/events")).body("{}").send().await.unwrap()).await;
    assert_reply_error(&r, 404, "not_found", None);
    srv.stop().await;
}

#[tokio::test]
async fn bad_activity_parameters_are_invalid_query() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    for q in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=ten",
        "limit=1.5",
        "limit=",
        "before=abc",
        "before=-3",
        "after=xyz",
        "after=1e3",
        "type=Bad",
        "type=",
        "type=a%20b",
    ] {
        let r = get_reply(&c, &srv.url(&format!("/api/v1/activity/recent?{q}"))).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert_reply_error(&r, 400, "invalid_query", None);
    }
    for q in ["limit=1", "limit=500", "before=0", "after=0", "type=a&type=b", ""] {
        let r = get_reply(&c, &srv.url(&format!("/api/v1/activity/recent?{q}"))).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
    }
    srv.stop().await;
}

// ---------------------------------------------------------------- all or nothing

#[tokio::test]
async fn a_bad_event_anywhere_rejects_the_whole_request() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let r = post_json(&c, &srv.base, &json!([{"type": "ingestion_complete"}, {"type": "x", "id": "keep-1"}])).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let before = stats_of(&c, &srv.base).await;
    let before_items = activity_all(&c, &srv.base, "", 50).await;
    let bad_batches = [
        (
            json!([{"type": "ingestion_complete"}, {"type": "x", "id": "new-1"}, {"type": "BAD"}, {"type": "y"}]),
            "invalid_event",
        ),
        (json!([{"type": "ingestion_complete"}, {"type": "x", "id": "new-2"}, {"type": "pong"}]), "reserved_type"),
        (
            json!([{"type": "stats_update", "data": {"g": 1}}, {"type": "error"}, {"type": "stats_update", "data": {"errors": 1}}]),
            "reserved_stat",
        ),
    ];
    for (batch, code) in &bad_batches {
        let r = post_json(&c, &srv.base, batch).await;
        assert_reply_error(&r, 400, code, Some(2));
    }
    let nd = "{\"type\":\"ingestion_complete\"}\n{\"type\":\"x\",\"id\":\"new-3\"}\n{oops\n";
    let r = post_ingest(&c, &srv.base, Some("application/x-ndjson"), None, nd).await;
    assert_reply_error(&r, 400, "invalid_json", Some(2));
    let after = stats_of(&c, &srv.base).await;
    for k in ["eventsTotal", "lastSeq", "eventsByType", "filesProcessed", "errors", "lastEventAt"] {
        assert_eq!(after[k], before[k], "{k} moved");
    }
    assert!(after.get("g").is_none(), "a gauge of a refused request was set: {after}");
    assert_eq!(after["eventsTotal"], json!(2));
    assert_eq!(activity_all(&c, &srv.base, "", 50).await, before_items);
    // Ids of refused requests were not remembered; no seq was taken.
    let r = post_json(&c, &srv.base, &json!([{"type": "x", "id": "new-1"}, {"type": "x", "id": "keep-1"}])).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body, json!({"accepted": 1, "duplicates": 1, "seqs": [3, 2]}));
    srv.stop().await;
}

// ---------------------------------------------------------------- duplicates

#[tokio::test]
async fn a_duplicate_id_reports_its_first_seq_and_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let r = post_json(&c, &srv.base, &json!([{"type": "ingestion_complete", "id": "f-1"}, {"type": "b", "id": "f-2"}]))
        .await;
    assert_eq!(r.body, json!({"accepted": 2, "duplicates": 0, "seqs": [1, 2]}), "{}", r.text);
    // Same ids again (a client retry), a new one between, and a repeat inside the request.
    let r = post_json(
        &c,
        &srv.base,
        &json!([
            {"type": "ingestion_complete", "id": "f-2"},
            {"type": "c", "id": "f-3"},
            {"type": "other_type", "id": "f-1", "data": {"changed": true}},
            {"type": "c", "id": "f-3"},
            {"type": "no_id"}
        ]),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body, json!({"accepted": 2, "duplicates": 3, "seqs": [2, 3, 1, 3, 4]}));
    // A request of only duplicates.
    let r = post_json(&c, &srv.base, &json!({"type": "ingestion_complete", "id": "f-1"})).await;
    assert_eq!(r.body, json!({"accepted": 0, "duplicates": 1, "seqs": [1]}));
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["eventsTotal"], json!(4));
    assert_eq!(s["lastSeq"], json!(4));
    assert_eq!(s["filesProcessed"], json!(1));
    assert_eq!(s["eventsByType"], json!({"ingestion_complete": 1, "b": 1, "c": 1, "no_id": 1}));
    let items = activity_all(&c, &srv.base, "", 50).await;
    assert_eq!(seqs_of(&items), vec![4, 3, 2, 1]);
    assert_eq!(items[3]["type"], json!("ingestion_complete"), "the first version is kept");
    let m = get_reply(&c, &srv.url("/metrics")).await.text;
    assert!(m.lines().any(|l| l == "sidewire_ingest_duplicates_total 4"), "duplicates metric:\n{m}");
    srv.stop().await;
}

// ---------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_producers_get_unique_dense_seqs() {
    const PRODUCERS: usize = 64;
    const REQUESTS: usize = 6;
    const BATCH: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let c = c.clone();
        let base = srv.base.clone();
        tasks.push(tokio::spawn(async move {
            let mut got: Vec<(String, u64)> = Vec::new();
            for r in 0..REQUESTS {
                let batch: Vec<Value> = (0..BATCH)
                    .map(|i| json!({"type": format!("p{}", p % 4), "id": format!("p{p}-r{r}-e{i}"), "data": {"p": p, "r": r, "i": i}}))
                    .collect();
                let reply = post_json(&c, &base, &Value::Array(batch)).await;
                assert_eq!(reply.status, 202, "{}", reply.text);
                assert_eq!(reply.body["accepted"], json!(BATCH));
                let seqs: Vec<u64> = reply.body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs of one request follow request order: {seqs:?}");
                for (i, s) in seqs.into_iter().enumerate() {
                    got.push((format!("p{p}-r{r}-e{i}"), s));
                }
            }
            got
        }));
    }
    let mut all = std::collections::HashMap::new();
    for t in tasks {
        for (id, seq) in t.await.unwrap() {
            assert!(all.insert(seq, id).is_none(), "seq {seq} handed out twice");
        }
    }
    let n = (PRODUCERS * REQUESTS * BATCH) as u64;
    let seqs: BTreeSet<u64> = all.keys().copied().collect();
    assert_eq!(seqs, (1..=n).collect::<BTreeSet<u64>>());
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["eventsTotal"], json!(n));
    assert_eq!(s["lastSeq"], json!(n));
    let by_type: u64 = s["eventsByType"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(by_type, n);
    // What is stored matches what each producer was told.
    let items = activity_all(&c, &srv.base, "", 500).await;
    assert_eq!(items.len() as u64, n);
    for e in &items {
        let seq = e["seq"].as_u64().unwrap();
        assert_eq!(e["id"].as_str(), Some(all[&seq].as_str()), "seq {seq}");
    }
    srv.stop().await;
}
