//! Several replicas (CONTRACT section 8), as real processes on loopback,
//! on the machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379).
//!
//! Each test makes its own database (dropped at the end) and its own Redis
//! channel prefix. Outages are simulated with a TCP proxy between the
//! replicas and the service (see [`Proxy`]); the services themselves are
//! never touched. Without PostgreSQL or Redis a test prints why and skips,
//! unless `SIDEWIRE_TEST_REQUIRE` lists `postgres`/`redis`.

use crate::common::api::post_ingest;
use crate::common::services::{redis_up, Db, Proxy, NEXT, REDIS};
use crate::common::{client, get_json, wait_listening};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// One replica: the real binary as a child process.
struct Replica {
    child: Child,
    base: String,
    port: u16,
    dir: PathBuf,
}

struct Setup {
    pg_url: String,
    backend: &'static str,
    redis_port: u16,
    prefix: String,
}

impl Setup {
    /// Replicas on the machine's PostgreSQL and Redis, with a channel prefix
    /// of this test's own.
    fn redis(db: &Db, tag: &str) -> Setup {
        let prefix = format!("swit-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        Setup { pg_url: db.url(5432), backend: "redis", redis_port: 6379, prefix }
    }
}

/// This test's database (and a check that Redis answers, when `redis`), or
/// `None` when the test is to be skipped (the reason is printed).
async fn prepare(test: &str, redis: bool) -> Option<Db> {
    let db = Db::create(test).await?;
    if redis && !redis_up(test).await {
        return None;
    }
    Some(db)
}

impl Replica {
    fn start(dir: &Path, name: &str, s: &Setup) -> Replica {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nreplica_name = \"{name}\"\n\
             [persist]\nplugin = \"postgres\"\npostgres_url = \"{}\"\npostgres_pool_size = 4\n\
             [broadcast]\nbackend = \"{}\"\nredis_url = \"redis://127.0.0.1:{}/0\"\nprefix = \"{}\"\n\
             [stats]\ninterval_secs = 1\n\
             [ws]\nmax_connections_per_ip = 1000\nconnect_rate_per_ip_per_min = 100000\n",
            s.pg_url, s.backend, s.redis_port, s.prefix
        );
        let cfg = dir.join("sidewire.toml");
        std::fs::write(&cfg, text).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sidewire"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .current_dir(&dir)
            .env_remove("SIDEWIRE_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sidewire");
        let mut r = Replica { child, base: String::new(), port: 0, dir };
        let addr = wait_listening(&mut r.child, &r.dir.join("server.log"), &format!("replica {name}"));
        r.port = addr.port();
        r.base = format!("http://{addr}");
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn ws(&self, query: &str) -> Ws {
        let url = format!("ws://127.0.0.1:{}/api/v1/ws/dashboard{query}", self.port);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url))
            .await
            .expect("ws connect timed out")
            .expect("ws connect");
        ws
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// POST /api/v1/ingest: (status, body, Retry-After).
async fn ingest(c: &reqwest::Client, base: &str, body: &Value) -> (u16, Value, Option<String>) {
    let r = post_ingest(c, base, Some("application/json"), None, body.to_string()).await;
    let retry = r.header("retry-after").map(str::to_string);
    (r.status, r.body, retry)
}

/// Polls `f` until it gives `Some`, or fails after `within`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads event seqs from a dashboard socket until `until` is seen.
async fn events_until(ws: &mut Ws, until: u64, within: Duration) -> Vec<u64> {
    let deadline = Instant::now() + within;
    let mut seqs = Vec::new();
    while seqs.last().is_none_or(|s| *s < until) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            other => panic!("socket ended or timed out after seqs {:?}: {other:?}", seqs.last()),
        };
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                seqs.push(seq);
            }
        }
    }
    seqs
}

/// Waits for `connection_ack` and the first `stats_update`.
async fn ready(ws: &mut Ws) -> Value {
    let mut ack = Value::Null;
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended before ready") };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("connection_ack") => ack = v,
            Some("stats_update") => return ack,
            _ => {}
        }
    }
}

fn batch(tag: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"type": "query_complete", "id": format!("{tag}-{i}"), "data": {"q": tag, "ms": i}}))
            .collect(),
    )
}

async fn metric(c: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let text = c.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_deliver_one_order_and_agree_on_stats() {
    let test = "three_replicas_deliver_one_order_and_agree_on_stats";
    let Some(db) = prepare(test, true).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::redis(&db, "order");
    let replicas: Vec<Replica> = ["a", "b", "c"].iter().map(|n| Replica::start(dir.path(), n, &setup)).collect();
    let mut sockets = Vec::new();
    for r in &replicas {
        let mut ws = r.ws("").await;
        ready(&mut ws).await;
        sockets.push(ws);
    }
    // Producers on every replica at once, every event with its own id.
    let c = client();
    let mut producers = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        for p in 0..3 {
            let (c, base) = (c.clone(), r.base.clone());
            producers.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for k in 0..40 {
                    let (status, body, _) = ingest(&c, &base, &batch(&format!("r{i}-p{p}-k{k}"), 5)).await;
                    assert_eq!(status, 202, "{body}");
                    seqs.extend(body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()));
                }
                seqs
            }));
        }
    }
    let mut acked = BTreeSet::new();
    for p in producers {
        for s in p.await.unwrap() {
            assert!(acked.insert(s), "seq {s} acknowledged twice");
        }
    }
    let total = acked.len() as u64;
    assert_eq!(total, 3 * 3 * 40 * 5);
    // One global order with no hole: the acknowledged seqs are 1..=total.
    assert_eq!(acked, (1..=total).collect::<BTreeSet<_>>());
    for (ws, r) in sockets.iter_mut().zip(&replicas) {
        let seen = events_until(ws, total, Duration::from_secs(20)).await;
        assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "replica at {} delivered out of order or with gaps", r.base);
    }
    // Stats are the cluster's on every replica; connections are summed.
    for r in &replicas {
        let url = format!("{}/api/v1/stats", r.base);
        eventually(Duration::from_secs(15), "stats to agree", || {
            let c = c.clone();
            let url = url.clone();
            async move {
                let (_, s) = get_json(&c, &url).await;
                (s["eventsTotal"] == json!(total)
                    && s["lastSeq"] == json!(total)
                    && s["eventsByType"]["query_complete"] == json!(total)
                    && s["replicas"] == json!(3)
                    && s["activeConnections"] == json!(3)
                    && s["queriesCompleted"] == json!(total))
                .then_some(())
            }
        })
        .await;
        assert_eq!(metric(&c, &r.base, "sidewire_cluster_replicas ").await, Some(3.0));
        assert_eq!(metric(&c, &r.base, "sidewire_broadcast_bus_up{backend=\"redis\"} ").await, Some(1.0));
    }
    // The replicas that did not commit (all but the cluster's writer, see
    // `cluster::relay`) received the events over the bus.
    for r in &replicas {
        if metric(&c, &r.base, "sidewire_cluster_writer ").await == Some(0.0) {
            let received = metric(&c, &r.base, "sidewire_broadcast_received_total ").await.unwrap();
            assert!(received > 0.0, "nothing came over the bus to {}", r.base);
        }
    }
    assert_eq!(db.query_one_i64("SELECT count(*) FROM sidewire_events").await, total as i64);
    for r in &replicas {
        let log = r.log();
        assert!(log.contains("joining the cluster"), "{log}");
        assert!(!log.contains("not-the-password"), "the PostgreSQL password was logged:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_id_on_two_replicas_at_once_gets_one_seq() {
    let test = "the_same_id_on_two_replicas_at_once_gets_one_seq";
    let Some(db) = prepare(test, true).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::redis(&db, "id");
    let a = Replica::start(dir.path(), "a", &setup);
    let b = Replica::start(dir.path(), "b", &setup);
    let c = client();
    for i in 0..40 {
        let body = json!({"type": "x", "id": format!("same-{i}")});
        let (ra, rb) = tokio::join!(ingest(&c, &a.base, &body), ingest(&c, &b.base, &body));
        assert_eq!((ra.0, rb.0), (202, 202));
        assert_eq!(ra.1["seqs"], rb.1["seqs"], "id same-{i} got two seqs");
        assert_eq!(ra.1["accepted"].as_u64().unwrap() + rb.1["accepted"].as_u64().unwrap(), 1, "{ra:?} {rb:?}");
    }
    assert_eq!(db.query_one_i64("SELECT count(*) FROM sidewire_events").await, 40);
    let (_, s) = get_json(&c, &format!("{}/api/v1/stats", b.base)).await;
    assert_eq!(s["eventsTotal"], json!(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resumes_on_another_replica_after_kill_9() {
    let test = "a_client_resumes_on_another_replica_after_kill_9";
    let Some(db) = prepare(test, true).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::redis(&db, "resume");
    let mut a = Replica::start(dir.path(), "a", &setup);
    let b = Replica::start(dir.path(), "b", &setup);
    let c = client();
    let mut ws = a.ws("").await;
    ready(&mut ws).await;
    let (_, first, _) = ingest(&c, &b.base, &batch("before", 10)).await;
    let last_seen =
        *events_until(&mut ws, first["seqs"][9].as_u64().unwrap(), Duration::from_secs(10)).await.last().unwrap();
    // Acknowledged by `a` right before it dies: must survive.
    let (status, acked, _) = ingest(&c, &a.base, &batch("last-words", 5)).await;
    assert_eq!(status, 202);
    let url = format!("{}/api/v1/stats", b.base);
    eventually(Duration::from_secs(10), "both replicas to count", || {
        let (c, url) = (c.clone(), url.clone());
        async move { (get_json(&c, &url).await.1["replicas"] == json!(2)).then_some(()) }
    })
    .await;
    a.kill9();
    let killed = Instant::now();
    drop(ws);
    let (_, more, _) = ingest(&c, &b.base, &batch("after", 10)).await;
    let newest = more["seqs"][9].as_u64().unwrap();
    let c3 = Replica::start(dir.path(), "c", &setup);
    let mut ws = c3.ws(&format!("?afterSeq={last_seen}")).await;
    let mut replayed = Vec::new();
    let mut complete = None;
    while complete.is_none() {
        let Some(Ok(Message::Text(t))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() else {
            panic!("socket ended")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("resume_complete") => complete = Some(v),
            _ if v.get("seq").is_some() => replayed.push(v["seq"].as_u64().unwrap()),
            _ => {}
        }
    }
    assert_eq!(replayed, ((last_seen + 1)..=newest).collect::<Vec<_>>());
    for s in acked["seqs"].as_array().unwrap() {
        assert!(replayed.contains(&s.as_u64().unwrap()), "acknowledged seq {s} lost with the replica");
    }
    assert_eq!(complete.unwrap()["data"]["truncated"], json!(false));
    // The dead replica stops counting within 15 s: b and c remain.
    let url = format!("{}/api/v1/stats", c3.base);
    let mut seen_three = false;
    loop {
        let n = get_json(&c, &url).await.1["replicas"].as_u64().unwrap();
        seen_three |= n == 3;
        if n == 2 && (seen_three || killed.elapsed() > Duration::from_secs(4)) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "the killed replica still counts ({n})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How a test takes a service away.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// Connections closed, new ones refused.
    Cut,
    /// Connections stay open but nothing passes (a hung server).
    Stall,
}

async fn take_away(proxy: &Proxy, how: Outage) {
    match how {
        Outage::Cut => proxy.cut().await,
        Outage::Stall => proxy.stall(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_events_still_arrive_from_the_store_and_fan_out_returns() {
    redis_outage("redis_down_events_still_arrive_from_the_store_and_fan_out_returns", Outage::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stalled_events_still_arrive_from_the_store_and_fan_out_returns() {
    redis_outage("redis_stalled_events_still_arrive_from_the_store_and_fan_out_returns", Outage::Stall).await;
}

async fn redis_outage(test: &str, how: Outage) {
    let Some(db) = prepare(test, true).await else { return };
    let proxy = Proxy::start(REDIS).await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup { redis_port: proxy.port, ..Setup::redis(&db, "redis") };
    let a = Replica::start(dir.path(), "a", &setup);
    let b = Replica::start(dir.path(), "b", &setup);
    let c = client();
    let bus = "sidewire_broadcast_bus_up{backend=\"redis\"} ";
    for r in [&a, &b] {
        eventually(Duration::from_secs(10), "the bus to connect", || {
            let (c, base) = (c.clone(), r.base.clone());
            async move { (metric(&c, &base, bus).await == Some(1.0)).then_some(()) }
        })
        .await;
    }
    let mut ws = b.ws("").await;
    ready(&mut ws).await;
    take_away(&proxy, how).await;
    // Ingest goes on, on both replicas (one of them is the cluster's writer,
    // the other forwards to it while Redis is there: now it commits its
    // groups itself); every event reaches the dashboard within 2 s of its
    // 202, from the store.
    let mut expected = Vec::new();
    for k in 0..6 {
        let on = if k % 2 == 0 { &a } else { &b };
        let (status, body, _) = ingest(&c, &on.base, &batch(&format!("down-{k}"), 3)).await;
        assert_eq!(status, 202, "{body}");
        let seqs: Vec<u64> = body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
        let acked_at = Instant::now();
        let got = events_until(&mut ws, *seqs.last().unwrap(), Duration::from_secs(5)).await;
        assert!(acked_at.elapsed() < Duration::from_secs(2), "event took {:?} with Redis down", acked_at.elapsed());
        expected.extend(seqs);
        assert_eq!(got.last(), expected.last());
    }
    // Readiness says degraded (still 200) within 10 s.
    let url = format!("{}/readyz", a.base);
    let body = eventually(Duration::from_secs(10), "readyz to report degraded", || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let (status, body) = get_json(&c, &url).await;
            (status == 200 && body["checks"]["broadcast"] == json!("degraded")).then_some(body)
        }
    })
    .await;
    assert_eq!(body["status"], json!("ok"), "{body}");
    assert!(metric(&c, &b.base, "sidewire_broadcast_gap_fills_total ").await.unwrap() >= 1.0);
    proxy.restore();
    for r in [&a, &b] {
        eventually(Duration::from_secs(15), "the bus to come back", || {
            let (c, base) = (c.clone(), r.base.clone());
            async move { (metric(&c, &base, bus).await == Some(1.0)).then_some(()) }
        })
        .await;
    }
    let (_, body) = get_json(&c, &url).await;
    assert_eq!(body["checks"]["broadcast"], json!("ok"), "{body}");
    // Back on the bus: events arrive, in order, no gap.
    let (_, body, _) = ingest(&c, &a.base, &batch("back", 4)).await;
    let last = body["seqs"][3].as_u64().unwrap();
    let got = events_until(&mut ws, last, Duration::from_secs(5)).await;
    assert_eq!(got, ((expected.last().unwrap() + 1)..=last).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_refuses_ingest_and_sockets_continue_without_gap() {
    postgres_outage("postgres_down_refuses_ingest_and_sockets_continue_without_gap", Outage::Cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stalled_refuses_ingest_and_sockets_continue_without_gap() {
    postgres_outage("postgres_stalled_refuses_ingest_and_sockets_continue_without_gap", Outage::Stall).await;
}

async fn postgres_outage(test: &str, how: Outage) {
    let Some(db) = prepare(test, true).await else { return };
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup { pg_url: db.url(proxy.port), ..Setup::redis(&db, "pg") };
    let a = Replica::start(dir.path(), "a", &setup);
    let b = Replica::start(dir.path(), "b", &setup);
    let c = client();
    let mut ws = b.ws("").await;
    ready(&mut ws).await;
    let (_, body, _) = ingest(&c, &a.base, &batch("up", 3)).await;
    let before = body["seqs"][2].as_u64().unwrap();
    events_until(&mut ws, before, Duration::from_secs(5)).await;
    take_away(&proxy, how).await;
    let started = Instant::now();
    let (status, body, retry) = ingest(&c, &a.base, &batch("refused", 2)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], json!("persist_unavailable"), "{body}");
    assert!(retry.is_some(), "no Retry-After");
    let url = format!("{}/readyz", a.base);
    eventually(Duration::from_secs(10), "readyz 503", || {
        let (c, url) = (c.clone(), url.clone());
        async move { (get_json(&c, &url).await.0 == 503).then_some(()) }
    })
    .await;
    // Later requests while it is down fail fast.
    let started = Instant::now();
    assert_eq!(ingest(&c, &a.base, &batch("refused-2", 1)).await.0, 503);
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    proxy.restore();
    let body = eventually(Duration::from_secs(15), "ingest to work again", || {
        let c = c.clone();
        let base = a.base.clone();
        async move {
            let (status, body, _) =
                ingest(&c, &base, &batch(&format!("back-{}", NEXT.fetch_add(1, Ordering::SeqCst)), 2)).await;
            (status == 202).then_some(body)
        }
    })
    .await;
    let last = body["seqs"][1].as_u64().unwrap();
    // The socket stayed open and continues with no gap.
    let got = events_until(&mut ws, last, Duration::from_secs(5)).await;
    assert_eq!(got, ((before + 1)..=last).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_postgres_backend_fans_out_through_notify() {
    let test = "the_postgres_backend_fans_out_through_notify";
    let Some(db) = prepare(test, false).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup { backend: "postgres", ..Setup::redis(&db, "notify") };
    let a = Replica::start(dir.path(), "a", &setup);
    let b = Replica::start(dir.path(), "b", &setup);
    let c = client();
    let mut wa = a.ws("").await;
    let mut wb = b.ws("").await;
    ready(&mut wa).await;
    ready(&mut wb).await;
    let mut last = 0;
    for k in 0..10 {
        let target = if k % 2 == 0 { &a } else { &b };
        let (status, body, _) = ingest(&c, &target.base, &batch(&format!("n{k}"), 4)).await;
        assert_eq!(status, 202);
        last = body["seqs"][3].as_u64().unwrap();
    }
    for ws in [&mut wa, &mut wb] {
        let started = Instant::now();
        assert_eq!(events_until(ws, last, Duration::from_secs(5)).await, (1..=last).collect::<Vec<_>>());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(metric(&c, &a.base, "sidewire_broadcast_bus_up{backend=\"postgres\"} ").await, Some(1.0));
    let (_, ready_body) = get_json(&c, &format!("{}/readyz", b.base)).await;
    assert_eq!(ready_body["checks"]["broadcast"], json!("ok"), "{ready_body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_with_one_name_are_told() {
    let test = "two_replicas_with_one_name_are_told";
    let Some(db) = prepare(test, false).await else { return };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let setup = Setup { backend: "local", ..Setup::redis(&db, "name") };
    let a = Replica::start(d1.path(), "twin", &setup);
    let b = Replica::start(d2.path(), "twin", &setup);
    let told = "another live replica also calls itself this";
    eventually(Duration::from_secs(15), "the shared name to be reported", || {
        let seen = a.log().contains(told) || b.log().contains(told);
        async move { seen.then_some(()) }
    })
    .await;
    // A restart under the same name is not a clash.
    let d3 = tempfile::tempdir().unwrap();
    let mut solo = Replica::start(d3.path(), "solo", &setup);
    solo.kill9();
    let again = Replica::start(d3.path(), "solo", &setup);
    // Three heartbeats of the new process (each checks who wrote before).
    let seen_at = "SELECT (extract(epoch FROM seen_at) * 1000)::int8 FROM sidewire_replicas WHERE name = 'solo'";
    let mut beats = vec![db.query_one_i64(seen_at).await];
    let deadline = Instant::now() + Duration::from_secs(20);
    while beats.len() < 4 {
        assert!(Instant::now() < deadline, "the restarted replica wrote no heartbeats");
        let now = db.query_one_i64(seen_at).await;
        if now != *beats.last().unwrap() {
            beats.push(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!again.log().contains(told), "a restart was taken for a second replica:\n{}", again.log());
}

/// What one dashboard saw: (seq, id) in the order received, across
/// reconnects (each resumes after the last seq it saw).
async fn watch_resuming(port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Vec<(u64, String)> {
    let mut seen: Vec<(u64, String)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let after = seen.last().map_or(String::new(), |(s, _)| format!("?afterSeq={s}"));
        let url = format!("ws://127.0.0.1:{port}/api/v1/ws/dashboard{after}");
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(url)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            let msg = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(m))) => m,
                Ok(_) => break,
            };
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if let (Some(seq), Some(id)) =
                    (v.get("seq").and_then(Value::as_u64), v.get("id").and_then(Value::as_str))
                {
                    seen.push((seq, id.to_string()));
                }
            }
        }
    }
    seen
}

/// CONTRACT §8 through a crash of the database itself: three replicas with
/// producers and dashboards on a PostgreSQL server of the test's own, which
/// is `kill -9`ed mid-load and started again (crash recovery). Every event
/// that got a 202 is stored exactly once with the seq it was answered;
/// the seqs have no hole; every dashboard saw a gap-free, in-order prefix of
/// the store (no seq ever shown with another event); producers that retried
/// with the same ids got their original seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_crash_loses_no_acknowledged_event_and_shows_no_seq_twice() {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let test = "a_postgres_crash_loses_no_acknowledged_event_and_shows_no_seq_twice";
    if !redis_up(test).await {
        return;
    }
    let Some(pg) = crate::common::services::OwnPostgres::start(test) else { return };
    pg.client("postgres").await.batch_execute("CREATE DATABASE crash").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        pg_url: pg.url("crash"),
        backend: "redis",
        redis_port: 6379,
        prefix: format!("swit-crash-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)),
    };
    let replicas: Vec<Replica> = ["a", "b", "c"].iter().map(|n| Replica::start(dir.path(), n, &setup)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let dashboards: Vec<_> = replicas.iter().map(|r| tokio::spawn(watch_resuming(r.port, stop.clone()))).collect();
    // Producers: batches of 5 with unique ids, each retried with the same
    // ids until it is acknowledged.
    let producing = Arc::new(AtomicBool::new(true));
    let c = client();
    let mut producers = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        for p in 0..2 {
            let (c, base, producing) = (c.clone(), r.base.clone(), producing.clone());
            producers.push(tokio::spawn(async move {
                let mut acked: Vec<(String, u64)> = Vec::new();
                let (mut k, mut retries) = (0, 0u32);
                while producing.load(Ordering::SeqCst) {
                    let body = batch(&format!("r{i}-p{p}-k{k}"), 5);
                    loop {
                        let (status, reply, _) = ingest(&c, &base, &body).await;
                        if status == 202 {
                            let seqs = reply["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap());
                            let ids = body.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string());
                            acked.extend(ids.zip(seqs));
                            break;
                        }
                        assert!(status == 503 || status == 0, "unexpected answer {status}: {reply}");
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    k += 1;
                }
                (acked, retries)
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_server();
    tokio::time::sleep(Duration::from_secs(4)).await;
    producing.store(false, Ordering::SeqCst);
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut retried = 0;
    for p in producers {
        let (pairs, retries) = p.await.unwrap();
        retried += retries;
        for (id, seq) in pairs {
            assert!(acked.insert(id.clone(), seq).is_none(), "id {id} acknowledged twice");
        }
    }
    assert!(retried > 0, "the crash refused no request: it happened outside the load");
    // The store: seqs 1..=n without a hole, each id once.
    let store = pg.client("crash").await;
    let rows = store.query("SELECT seq, id FROM sidewire_events ORDER BY seq", &[]).await.unwrap();
    let stored: Vec<(u64, String)> = rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1))).collect();
    let n = stored.len() as u64;
    assert_eq!(stored.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "a hole in the seqs");
    let by_seq: BTreeMap<u64, String> = stored.iter().cloned().collect();
    let by_id: BTreeMap<String, u64> = stored.iter().map(|(s, id)| (id.clone(), *s)).collect();
    // Every acknowledged event is stored, with the seq it was answered.
    for (id, seq) in &acked {
        assert_eq!(by_id.get(id), Some(seq), "acknowledged {id} (seq {seq}) lost or moved");
    }
    // Dashboards: once caught up, each saw exactly the store, in order.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for (d, r) in dashboards.into_iter().zip(&replicas) {
        let seen = d.await.unwrap();
        for (seq, id) in &seen {
            assert_eq!(
                by_seq.get(seq),
                Some(id),
                "replica {} showed seq {seq} with {id}, the store has {:?}",
                r.base,
                by_seq.get(seq)
            );
        }
        let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "replica {}: not every stored event, once, in order", r.base);
    }
    for r in &replicas {
        assert!(!r.log().contains("not-the-password"), "the PostgreSQL password was logged");
    }
}

/// A client that saw seqs up to N on one replica and resumes with
/// `?afterSeq=N` on a replica whose own delivery lags behind (here: no bus,
/// so it learns of commits only from its head check) gets only what comes
/// after N: nothing twice. (Found by the cluster soak: the replay used the
/// lagging replica's own last seq as the limit of what the client knows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_on_a_lagging_replica_sends_nothing_twice() {
    let test = "resuming_on_a_lagging_replica_sends_nothing_twice";
    let Some(db) = prepare(test, true).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = Replica::start(dir.path(), "a", &Setup::redis(&db, "lag"));
    let b = Replica::start(dir.path(), "b", &Setup { backend: "local", ..Setup::redis(&db, "lag") });
    let c = client();
    let mut on_a = a.ws("").await;
    ready(&mut on_a).await;
    let (status, reply, _) = ingest(&c, &a.base, &batch("lag-1", 5)).await;
    assert_eq!(status, 202, "{reply}");
    let seen = events_until(&mut on_a, 5, Duration::from_secs(5)).await;
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    // At once to b, which has not delivered 1..=5 yet (its head check is
    // half a second away and fills on the second sighting).
    let mut on_b = b.ws("?afterSeq=5").await;
    let (status, reply, _) = ingest(&c, &a.base, &batch("lag-2", 1)).await;
    assert_eq!(status, 202, "{reply}");
    let got = events_until(&mut on_b, 6, Duration::from_secs(10)).await;
    assert_eq!(got, vec![6], "b sent events the client had already seen on a");
}

/// The replica whose `sidewire_cluster_writer` is 1, once exactly one is.
async fn the_writer(c: &reqwest::Client, replicas: &[&Replica]) -> usize {
    eventually(Duration::from_secs(10), "exactly one writer", || {
        let c = c.clone();
        let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
        async move {
            let mut writers = Vec::new();
            for (i, b) in bases.iter().enumerate() {
                if metric(&c, b, "sidewire_cluster_writer ").await? == 1.0 {
                    writers.push(i);
                }
            }
            (writers.len() == 1).then(|| writers[0])
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_commits_for_all_and_another_takes_over_after_kill_9() {
    let test = "one_replica_commits_for_all_and_another_takes_over_after_kill_9";
    let Some(db) = prepare(test, true).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::redis(&db, "relay");
    let mut replicas: Vec<Replica> = ["a", "b", "c"].iter().map(|n| Replica::start(dir.path(), n, &setup)).collect();
    let c = client();
    let writer = the_writer(&c, &replicas.iter().collect::<Vec<_>>()).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != writer).collect();
    // Every replica accepts; the followers' groups are committed by the writer.
    let mut acked = BTreeSet::new();
    for round in 0..5 {
        for (i, r) in replicas.iter().enumerate() {
            let (status, body, _) = ingest(&c, &r.base, &batch(&format!("before-{round}-{i}"), 4)).await;
            assert_eq!(status, 202, "{body}");
            for s in body["seqs"].as_array().unwrap() {
                assert!(acked.insert(s.as_u64().unwrap()), "seq {s} acknowledged twice");
            }
        }
    }
    for &f in &followers {
        let base = &replicas[f].base;
        let answered = metric(&c, base, "sidewire_cluster_forwards_total{result=\"answered\"} ").await.unwrap();
        assert_eq!(answered, 5.0, "replica {base} did not forward its groups to the writer");
        // Counted where they were accepted.
        let counted = metric(&c, base, "sidewire_ingest_events_total{type=\"query_complete\"} ").await.unwrap();
        assert_eq!(counted, 20.0, "replica {base}");
    }
    let w = &replicas[writer].base;
    assert_eq!(metric(&c, w, "sidewire_ingest_events_total{type=\"query_complete\"} ").await, Some(20.0));
    // A retry on another replica is a duplicate with its first seq.
    let (_, again, _) = ingest(&c, &replicas[followers[0]].base, &batch("before-0-0", 4)).await;
    assert_eq!(again["duplicates"], json!(4), "{again}");

    // The writer dies: the others take their groups back and commit them
    // themselves, and one of them becomes the writer.
    replicas[writer].kill9();
    let survivors: Vec<&Replica> = followers.iter().map(|&f| &replicas[f]).collect();
    for round in 0..3 {
        for (i, r) in survivors.iter().enumerate() {
            let (status, body, _) = ingest(&c, &r.base, &batch(&format!("after-{round}-{i}"), 4)).await;
            assert_eq!(status, 202, "{body}");
            for s in body["seqs"].as_array().unwrap() {
                assert!(acked.insert(s.as_u64().unwrap()), "seq {s} acknowledged twice");
            }
        }
    }
    let new_writer = the_writer(&c, &survivors).await;
    let follower = survivors[1 - new_writer];
    let before = metric(&c, &follower.base, "sidewire_cluster_forwards_total{result=\"answered\"} ").await.unwrap();
    // Once the follower has left its direct spell, it forwards again.
    eventually(Duration::from_secs(15), "forwarding to the new writer", || {
        let (c, base) = (c.clone(), follower.base.clone());
        let tag = format!("late-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        async move {
            let (status, body, _) = ingest(&c, &base, &batch(&tag, 2)).await;
            assert_eq!(status, 202, "{body}");
            let now = metric(&c, &base, "sidewire_cluster_forwards_total{result=\"answered\"} ").await?;
            (now > before).then_some(())
        }
    })
    .await;
    // Nothing acknowledged was lost or doubled; the seqs have no hole.
    let stored = db.query_one_i64("SELECT count(*) FROM sidewire_events").await as u64;
    let top = db.query_one_i64("SELECT max(seq) FROM sidewire_events").await as u64;
    assert_eq!(stored, top, "a hole in the stored seqs");
    let list: Vec<String> = acked.iter().map(u64::to_string).collect();
    let found =
        db.query_one_i64(&format!("SELECT count(*) FROM sidewire_events WHERE seq IN ({})", list.join(","))).await;
    assert_eq!(found as usize, acked.len(), "an acknowledged seq is not stored");
}
