//! A persist plugin that fails on command (contract section 2: 503
//! `persist_unavailable` with `Retry-After`; section 6: `/readyz`), with
//! durable and queued ack.

use crate::common::*;
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{json, Value};
use sidewire::config::AckMode;
use sidewire::event::Event;
use sidewire::persist::memory::MemoryPlugin;
use sidewire::persist::{Batch, Dedupe, EventQuery, PersistCallback, PersistError, Query, Recovered};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Stores in memory unless told to fail.
struct Flaky {
    /// `persist` fails.
    fail: AtomicBool,
    /// `lookup_ids` fails.
    fail_lookup: AtomicBool,
    /// `health` fails.
    unhealthy: AtomicBool,
    /// `persist` waits while this is set.
    hold: AtomicBool,
    attempts: AtomicUsize,
    stored: parking_lot::Mutex<Vec<u64>>,
    inner: MemoryPlugin,
}

impl Flaky {
    fn new(fail: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            fail: AtomicBool::new(fail),
            fail_lookup: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            attempts: AtomicUsize::new(0),
            stored: parking_lot::Mutex::new(Vec::new()),
            inner: MemoryPlugin::new(100_000),
        })
    }

    fn stored(&self) -> Vec<u64> {
        self.stored.lock().clone()
    }
}

#[async_trait]
impl PersistCallback for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }

    async fn recover(&self) -> Result<Recovered, PersistError> {
        Ok(Recovered::default()) // seqs from 1
    }

    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        while self.hold.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(PersistError::unavailable("flaky", "switched off by the test"));
        }
        self.inner.persist(batch).await?;
        self.stored.lock().extend(batch.events.iter().map(|e| e.seq));
        Ok(())
    }

    async fn health(&self) -> Result<(), PersistError> {
        if self.unhealthy.load(Ordering::SeqCst) {
            Err(PersistError::unavailable("flaky", "health switched off by the test"))
        } else {
            Ok(())
        }
    }

    fn as_query(&self) -> Option<&dyn Query> {
        Some(self)
    }

    fn as_dedupe(&self) -> Option<&dyn Dedupe> {
        Some(self)
    }
}

#[async_trait]
impl Query for Flaky {
    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        self.inner.query(q).await
    }
}

/// Looks ids up (and fails on command), but `persist` does not refuse
/// stored ids: with durable ack the pipeline asks before numbering.
#[async_trait]
impl Dedupe for Flaky {
    async fn lookup_ids(&self, _ids: &[&str]) -> Result<HashMap<String, u64>, PersistError> {
        if self.fail_lookup.load(Ordering::SeqCst) {
            Err(PersistError::unavailable("flaky", "lookup switched off by the test"))
        } else {
            Ok(HashMap::new())
        }
    }
}

async fn start(
    plugin: &Arc<Flaky>,
    configure: impl FnOnce(&mut sidewire::config::Config),
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    configure(&mut cfg);
    let srv = TestServer::start_with(sidewire::ServerBuilder::new(cfg).persist(plugin.clone())).await;
    (srv, dir)
}

fn retry_after(r: &Reply) -> u64 {
    let v = r.header("retry-after").unwrap_or_else(|| panic!("no Retry-After on a 503: {:?}", r.headers));
    let secs: u64 = v.parse().unwrap_or_else(|_| panic!("Retry-After must be whole seconds: {v}"));
    assert!((1..=3600).contains(&secs), "Retry-After {secs}");
    secs
}

/// The value of one metric sample line (exact name and labels).
async fn metric(c: &reqwest::Client, base: &str, sample: &str) -> Option<f64> {
    let text = get_reply(c, &format!("{base}/metrics")).await.text;
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next message that is not a `stats_update`, if one comes in `within`.
async fn next_event(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] != "stats_update" {
                return Some(v);
            }
        }
    }
}

#[tokio::test]
async fn a_failing_store_answers_503_and_accepts_nothing_until_it_recovers() {
    let plugin = Flaky::new(true);
    let (srv, _dir) = start(&plugin, |_| {}).await;
    let c = client();
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url("/api/v1/ws/dashboard")).await.unwrap();
    let ack = next_event(&mut ws, Duration::from_secs(5)).await.expect("connection_ack");
    assert_eq!(ack["type"], json!("connection_ack"));

    let batch = json!([
        {"type": "ingestion_complete", "id": "p-1"},
        {"type": "error", "id": "p-2"},
        {"type": "stats_update", "data": {"totalNodes": 3}}
    ]);
    for _ in 0..2 {
        let r = post_json(&c, &srv.base, &batch).await;
        assert_reply_error(&r, 503, "persist_unavailable", None);
        retry_after(&r);
    }
    assert!(plugin.attempts.load(Ordering::SeqCst) >= 2, "the store was tried");
    assert!(plugin.stored().is_empty());
    // Nothing counted...
    let s = stats_of(&c, &srv.base).await;
    assert_eq!((s["eventsTotal"].clone(), s["lastSeq"].clone()), (json!(0), json!(0)));
    assert_eq!(s["eventsByType"], json!({}));
    assert_eq!((s["filesProcessed"].clone(), s["errors"].clone()), (json!(0), json!(0)));
    assert!(s.get("totalNodes").is_none(), "{s}");
    assert_eq!(s["lastEventAt"], Value::Null);
    assert_eq!(s["eventsPerMinute"], json!(0));
    let (items, _) = activity_page(&c, &srv.base, "").await;
    assert!(items.is_empty());
    assert_eq!(metric(&c, &srv.base, r#"sidewire_ingest_requests_total{status="503"}"#).await, Some(2.0));
    assert!(metric(&c, &srv.base, r#"sidewire_persist_failures_total{plugin="flaky"}"#).await.unwrap_or(0.0) >= 2.0);
    let m = get_reply(&c, &srv.url("/metrics")).await.text;
    assert!(!m.lines().any(|l| l.starts_with("sidewire_ingest_events_total{") && !l.ends_with(" 0")), "{m}");
    // ... nor broadcast.
    assert_eq!(next_event(&mut ws, Duration::from_millis(300)).await, None, "an event of a refused request went out");

    // Recovery: the same request now goes through, its ids were not taken.
    plugin.fail.store(false, Ordering::SeqCst);
    let r = post_json(&c, &srv.base, &batch).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!((r.body["accepted"].clone(), r.body["duplicates"].clone()), (json!(3), json!(0)));
    let seqs: Vec<u64> = r.body["seqs"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] >= 1, "{seqs:?}");
    assert_eq!(plugin.stored(), seqs);
    let s = stats_of(&c, &srv.base).await;
    assert_eq!((s["eventsTotal"].clone(), s["lastSeq"].clone()), (json!(3), json!(seqs[2])));
    assert_eq!(
        (s["filesProcessed"].clone(), s["errors"].clone(), s["totalNodes"].clone()),
        (json!(1), json!(1), json!(3))
    );
    // The dashboard gets the two plain events (not the gauge report), in order.
    for (seq, kind) in [(seqs[0], "ingestion_complete"), (seqs[1], "error")] {
        let e = next_event(&mut ws, Duration::from_secs(5)).await.expect("event broadcast after recovery");
        assert_eq!((e["seq"].as_u64(), e["type"].as_str()), (Some(seq), Some(kind)), "{e}");
    }
    assert_eq!(next_event(&mut ws, Duration::from_millis(200)).await, None);
    // And a retry of it is now a duplicate.
    let r = post_json(&c, &srv.base, &batch).await;
    assert_eq!(r.body["duplicates"], json!(2), "{}", r.text);
    srv.stop().await;
}

#[tokio::test]
async fn a_failing_dedupe_lookup_is_a_503_too() {
    let plugin = Flaky::new(false);
    plugin.fail_lookup.store(true, Ordering::SeqCst);
    let (srv, _dir) = start(&plugin, |_| {}).await;
    let c = client();
    let r = post_json(&c, &srv.base, &json!([{"type": "a"}, {"type": "a", "id": "needs-lookup"}])).await;
    assert_reply_error(&r, 503, "persist_unavailable", None);
    retry_after(&r);
    assert!(plugin.stored().is_empty());
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(0));
    plugin.fail_lookup.store(false, Ordering::SeqCst);
    let r = post_json(&c, &srv.base, &json!([{"type": "a"}, {"type": "a", "id": "needs-lookup"}])).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(2));
    srv.stop().await;
}

#[tokio::test]
async fn readyz_follows_the_plugin_health_check() {
    let plugin = Flaky::new(false);
    let (srv, _dir) = start(&plugin, |_| {}).await;
    let c = client();
    let r = get_reply(&c, &srv.url("/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("ok"));
    plugin.unhealthy.store(true, Ordering::SeqCst);
    let r = get_reply(&c, &srv.url("/readyz")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["status"], json!("unavailable"));
    assert!(r.body["checks"].is_object(), "{}", r.text);
    assert!(r.text.contains("flaky"), "the failing check is named: {}", r.text);
    // Liveness is not readiness.
    let r = get_reply(&c, &srv.url("/healthz")).await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"status": "ok"})));
    plugin.unhealthy.store(false, Ordering::SeqCst);
    let r = get_reply(&c, &srv.url("/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], json!("ok"));
    srv.stop().await;
}

#[tokio::test]
async fn durable_ack_with_a_full_queue_is_a_503() {
    let plugin = Flaky::new(false);
    plugin.hold.store(true, Ordering::SeqCst);
    let (srv, _dir) = start(&plugin, |c| c.persist.queue_len = 4).await;
    let c = client();
    let first = {
        let (c, base) = (c.clone(), srv.base.clone());
        tokio::spawn(async move { post_json(&c, &base, &json!([{"type": "a"}, {"type": "a"}, {"type": "a"}])).await })
    };
    wait_until("the first request reached the store", Duration::from_secs(5), || {
        let n = plugin.attempts.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    let r = post_json(&c, &srv.base, &json!([{"type": "b"}, {"type": "b"}])).await;
    assert_reply_error(&r, 503, "persist_unavailable", None);
    retry_after(&r);
    // 1 event still fits in a queue of 4 holding 3; it waits for the store.
    let mut fits = {
        let (c, base) = (c.clone(), srv.base.clone());
        tokio::spawn(async move { post_json(&c, &base, &json!({"type": "c"})).await })
    };
    // It is in the queue (3 + 1 events) ...
    wait_until("the 1 event is queued", Duration::from_secs(5), || {
        let depth = srv.app.metrics.persist_queue_depth.get();
        async move { depth == 4 }
    })
    .await;
    // ... and, the store being held, gets no answer (a queued ack would come at once).
    let early = tokio::time::timeout(Duration::from_millis(200), &mut fits).await;
    assert!(early.is_err(), "durable ack waits for the store: {:?}", early.map(|r| r.map(|r| r.status)));
    plugin.hold.store(false, Ordering::SeqCst);
    let r1 = first.await.unwrap();
    assert_eq!(r1.status, 202, "{}", r1.text);
    let r = fits.await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["eventsTotal"], json!(4));
    assert_eq!(s["eventsByType"], json!({"a": 3, "c": 1}));
    // Drained: room again.
    let r = post_json(&c, &srv.base, &json!([{"type": "b"}, {"type": "b"}, {"type": "b"}, {"type": "b"}])).await;
    assert_eq!(r.status, 202, "{}", r.text);
    srv.stop().await;
}

#[tokio::test]
async fn queued_ack_answers_at_once_and_stores_after_recovery() {
    let plugin = Flaky::new(true);
    let (srv, _dir) = start(&plugin, |c| c.persist.ack = AckMode::Queued).await;
    let c = client();
    let r1 =
        post_json(&c, &srv.base, &json!([{"type": "ingestion_complete", "id": "q-1"}, {"type": "a"}, {"type": "a"}]))
            .await;
    assert_eq!(r1.status, 202, "{}", r1.text);
    assert_eq!(r1.body, json!({"accepted": 3, "duplicates": 0, "seqs": [1, 2, 3]}));
    let r2 =
        post_json(&c, &srv.base, &json!([{"type": "b"}, {"type": "ingestion_complete", "id": "q-1"}, {"type": "b"}]))
            .await;
    assert_eq!(r2.status, 202, "{}", r2.text);
    assert_eq!(r2.body, json!({"accepted": 2, "duplicates": 1, "seqs": [4, 1, 5]}), "queued ids dedupe too");
    // The store keeps failing; the server keeps retrying.
    wait_until("retries", Duration::from_secs(10), || {
        let n = plugin.attempts.load(Ordering::SeqCst);
        async move { n >= 3 }
    })
    .await;
    assert!(plugin.stored().is_empty());
    plugin.fail.store(false, Ordering::SeqCst);
    wait_until("queued events stored after recovery", Duration::from_secs(20), || {
        let n = plugin.stored().len();
        async move { n >= 5 }
    })
    .await;
    assert_eq!(plugin.stored(), vec![1, 2, 3, 4, 5], "each stored once, in seq order");
    wait_until("stats caught up", Duration::from_secs(5), || {
        let c = c.clone();
        let base = srv.base.clone();
        async move { stats_of(&c, &base).await["eventsTotal"] == json!(5) }
    })
    .await;
    let s = stats_of(&c, &srv.base).await;
    assert_eq!((s["lastSeq"].clone(), s["filesProcessed"].clone()), (json!(5), json!(1)));
    assert_eq!(seqs_of(&activity_all(&c, &srv.base, "", 50).await), vec![5, 4, 3, 2, 1]);
    // New events go straight through now.
    let r = post_json(&c, &srv.base, &json!({"type": "c"})).await;
    assert_eq!(r.body["seqs"], json!([6]), "{}", r.text);
    wait_until("stored", Duration::from_secs(5), || {
        let n = plugin.stored().len();
        async move { n == 6 }
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn queued_ack_with_a_full_queue_is_a_503() {
    let plugin = Flaky::new(true);
    let (srv, _dir) = start(&plugin, |c| {
        c.persist.ack = AckMode::Queued;
        c.persist.queue_len = 5;
    })
    .await;
    let c = client();
    let three = json!([{"type": "a"}, {"type": "a"}, {"type": "a"}]);
    let r = post_json(&c, &srv.base, &three).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = post_json(&c, &srv.base, &three).await;
    assert_reply_error(&r, 503, "persist_unavailable", None);
    retry_after(&r);
    let r = post_json(&c, &srv.base, &json!([{"type": "b"}, {"type": "b"}])).await;
    assert_eq!(r.status, 202, "2 more fit: {}", r.text);
    let r = post_json(&c, &srv.base, &json!({"type": "c"})).await;
    assert_reply_error(&r, 503, "persist_unavailable", None);
    assert_eq!(metric(&c, &srv.base, "sidewire_persist_queue_depth").await, Some(5.0));
    // A batch larger than the whole queue can never fit.
    let big: Vec<Value> = (0..6).map(|_| json!({"type": "d"})).collect();
    let r = post_json(&c, &srv.base, &Value::Array(big)).await;
    assert_eq!(r.status, 503, "{}", r.text);

    plugin.fail.store(false, Ordering::SeqCst);
    wait_until("the queue drained", Duration::from_secs(20), || {
        let n = plugin.stored().len();
        async move { n == 5 }
    })
    .await;
    assert_eq!(plugin.stored(), vec![1, 2, 3, 4, 5]);
    let r = post_json(&c, &srv.base, &three).await;
    assert_eq!(r.status, 202, "room again: {}", r.text);
    assert_eq!(r.body["seqs"], json!([6, 7, 8]), "refused requests took no seqs");
    srv.stop().await;
}

#[tokio::test]
async fn queue_depth_metric_falls_back_to_zero_after_the_queue_drains() {
    let plugin = Flaky::new(true);
    let (srv, _dir) = start(&plugin, |c| c.persist.ack = AckMode::Queued).await;
    let c = client();
    let r = post_json(&c, &srv.base, &json!([{"type": "a"}, {"type": "a"}])).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(metric(&c, &srv.base, "sidewire_persist_queue_depth").await, Some(2.0));
    plugin.fail.store(false, Ordering::SeqCst);
    wait_until("stored", Duration::from_secs(10), || {
        let n = plugin.stored().len();
        async move { n == 2 }
    })
    .await;
    wait_until("queue depth 0", Duration::from_secs(3), || {
        let (c, base) = (c.clone(), srv.base.clone());
        async move { metric(&c, &base, "sidewire_persist_queue_depth").await == Some(0.0) }
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn queued_ack_is_also_bounded_in_bytes() {
    let plugin = Flaky::new(true);
    let (srv, _dir) = start(&plugin, |c| {
        c.persist.ack = AckMode::Queued;
        c.ingest.max_body_bytes = 8 * 1024;
        c.persist.queue_max_bytes = 8 * 1024;
    })
    .await;
    let c = client();
    let big = |i: usize| json!({"type": "blob", "data": {"i": i, "pad": "x".repeat(3000)}});
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..10 {
        let r = post_json(&c, &srv.base, &big(i)).await;
        match r.status {
            202 => accepted += 1,
            _ => {
                assert_reply_error(&r, 503, "persist_unavailable", None);
                retry_after(&r);
                refused = Some(i);
                break;
            }
        }
    }
    assert_eq!((accepted, refused), (2, Some(2)), "two ~3 KB events fit in 8 KiB, the third does not");
    // Small events still fit in what is left.
    let r = post_json(&c, &srv.base, &json!({"type": "small"})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    plugin.fail.store(false, Ordering::SeqCst);
    wait_until("the queue drained", Duration::from_secs(20), || {
        let n = plugin.stored().len();
        async move { n == 3 }
    })
    .await;
    let r = post_json(&c, &srv.base, &big(99)).await;
    assert_eq!(r.status, 202, "room again: {}", r.text);
    srv.stop().await;
}
