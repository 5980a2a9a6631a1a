//! The built-in dashboard page (`GET /`) in a real headless Chromium, driven
//! over the DevTools protocol (`common/cdp.rs`): it goes live, shows new
//! events and the updated counters, and after its connection drops (the
//! server stops; events are ingested while the page is cut off; a new
//! server comes up on the same address and data dir) it reconnects and
//! resumes without losing or doubling an event. Screenshots go to
//! `target/dashboard.png` (desktop) and `target/dashboard-phone.png`.
//!
//! Chromium is an outside program: see `common/external.rs` for when a
//! missing one skips and when it fails (`SIDEWIRE_TEST_REQUIRE`).

use crate::common::cdp;
use crate::common::external;
use crate::common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const STEP: Duration = Duration::from_secs(15);

/// A server on a given address (the `TestServer` harness always takes a new
/// port; a reconnecting page needs the old one back).
struct Rebound {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Rebound {
    async fn start(addr: SocketAddr, config: sidewire::config::Config) -> Rebound {
        // The port was just released by a server we stopped: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind {addr} again: {e}"),
            }
        };
        let running = sidewire::ServerBuilder::new(config).start().await.expect("server starts");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            running
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
        });
        Rebound { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("server stops in time").unwrap();
    }
}

/// Ingests `events` (one batch); returns their seqs.
async fn send(c: &reqwest::Client, base: &str, events: Value) -> Vec<u64> {
    let (status, body) = ingest(c, base, &events).await;
    assert_eq!(status, 202, "ingest: {body}");
    body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect()
}

/// A batch of `n` events of the three well-known kinds, tagged `label`.
fn batch(label: &str, n: usize) -> Value {
    let kinds = ["ingestion_complete", "query_complete", "error"];
    Value::Array(
        (0..n)
            .map(|i| {
                let kind = kinds[i % kinds.len()];
                let data = match kind {
                    "ingestion_complete" => json!({"file": format!("{label}-{i}.pdf"), "nodesCreated": i + 1}),
                    "query_complete" => json!({"query": format!("{label} question {i}"), "latencyMs": 120 + i}),
                    _ => json!({"component": "parser", "message": format!("{label} failure {i}")}),
                };
                json!({"type": kind, "id": format!("{label}-{i}"), "source": "browser-test", "data": data})
            })
            .collect(),
    )
}

/// The seqs of the feed's items, in DOM order.
const FEED_SEQS: &str = "[...document.querySelectorAll('#feed li.item')].map(li => Number(li.dataset.seq))";

fn stat(key: &str) -> String {
    format!("(document.querySelector('#stats [data-stat=\"{key}\"] .value') || {{}}).textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_page_in_headless_chromium() {
    const TEST: &str = "dashboard_page_in_headless_chromium";
    let Some(chromium) = external::find(
        TEST,
        "chromium",
        &["chromium", "chromium-browser", "google-chrome"],
        "install Debian's `chromium` package",
    ) else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), run(chromium))
        .await
        .expect("the browser test takes under 2 minutes");
}

async fn run(chromium: PathBuf) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let srv = TestServer::start(config_in(dir.path())).await;
    let addr = srv.addr;

    // Some history before the page opens: it must load it over REST.
    let mut all: Vec<u64> = send(&c, &srv.base, batch("before", 3)).await;

    let browser = cdp::Browser::launch(&chromium).await;
    let page = browser.new_page().await;
    page.viewport(1280, 900, false).await;
    page.call("Network.enable", json!({})).await; // to see the WebSocket URLs it opens
    page.goto(&srv.url("/")).await;
    let diag = |what: &str| format!("{what}; chromium stderr:\n{}", browser.stderr());

    // 1. Live, with the history.
    page.wait_for("document.querySelector('#conn-state').textContent === 'live'", STEP, "#conn-state = live").await;
    wait_seqs(&page, &all, "history over REST").await;

    // 2. New events appear, with their type, and the counters move.
    let live = send(&c, &srv.base, batch("live", 6)).await;
    all.extend(&live);
    wait_seqs(&page, &all, "live events").await;
    for (i, seq) in live.iter().enumerate() {
        let t = page.eval(&format!("document.querySelector('#feed li.item[data-seq=\"{seq}\"]').dataset.type")).await;
        let want = ["ingestion_complete", "query_complete", "error"][i % 3];
        assert_eq!(t, json!(want), "type of seq {seq}");
    }
    let text =
        page.eval(&format!("document.querySelector('#feed li.item[data-seq=\"{}\"]').textContent", live[0])).await;
    assert!(text.as_str().unwrap().contains("live-0.pdf"), "item shows its data: {text}");
    wait_counters(&page, &c, &srv.base).await;

    // The type filter narrows the feed, and clearing it restores it.
    page.eval("(() => { const f = document.querySelector('#type-filter'); f.value = 'error'; f.dispatchEvent(new Event('input')); })()").await;
    let types = page.eval("[...document.querySelectorAll('#feed li.item')].map(li => li.dataset.type)").await;
    let types: Vec<&str> = types.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(!types.is_empty() && types.iter().all(|t| *t == "error"), "filtered feed: {types:?}");
    page.eval("(() => { const f = document.querySelector('#type-filter'); f.value = ''; f.dispatchEvent(new Event('input')); })()").await;
    wait_seqs(&page, &all, "unfiltered feed").await;

    // 3. The connection drops: the server goes away.
    srv.stop().await;
    page.wait_for("document.querySelector('#conn-state').dataset.state !== 'live'", STEP, "page notices the drop")
        .await;
    let shown = page.eval("document.querySelector('#conn-state').textContent").await;
    println!("after the drop, #conn-state reads {shown}");

    // Events accepted while the page is cut off: a server on another port
    // (same data dir) takes them; the page cannot reach it.
    let other = TestServer::start(config_in(dir.path())).await;
    let missed = send(&c, &other.base, batch("missed", 7)).await;
    other.stop().await;
    all.extend(&missed);

    // The page's server comes back on the same address and data dir; more
    // events arrive around the reconnect and after it.
    let back = Rebound::start(addr, config_in(dir.path())).await;
    let base = format!("http://{addr}");
    all.extend(send(&c, &base, batch("around", 2)).await);
    page.wait_for("document.querySelector('#conn-state').textContent === 'live'", Duration::from_secs(40), "reconnect")
        .await;
    all.extend(send(&c, &base, batch("after", 3)).await);

    // It resumed over the WebSocket from the last seq it had seen.
    let urls: Vec<String> = browser
        .cdp
        .events(&page.session, "Network.webSocketCreated")
        .iter()
        .map(|e| e["url"].as_str().unwrap_or_default().to_string())
        .collect();
    let resume = format!("afterSeq={}", live.last().unwrap());
    assert!(
        urls.iter().any(|u| u.contains("/api/v1/ws/dashboard") && u.contains(&resume)),
        "the page should reconnect with ?{resume}; it opened {urls:?}"
    );
    println!("WebSocket URLs the page opened: {urls:?}");

    // 4. Every event exactly once, newest first, nothing else.
    wait_seqs(&page, &all, "resume without loss").await;
    let seqs: Vec<u64> = serde_json::from_value(page.eval(FEED_SEQS).await).unwrap();
    let mut want = all.clone();
    want.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seqs, want, "the feed after reconnecting: every event exactly once, newest first");
    wait_counters(&page, &c, &base).await;

    // One process: stats say `replicas: 1`; the page shows no replica note
    // under the connections card ("3 replicas" with a cluster) and no card
    // of its own for it.
    page.wait_for("(document.querySelector('#replicas') || {}).dataset?.value === '1'", STEP, "replicas from stats")
        .await;
    assert_eq!(page.eval("document.querySelector('#replicas').hidden").await, json!(true), "one replica: no note");
    assert_eq!(page.eval("document.querySelectorAll('#stats [data-stat=\"replicas\"]').length").await, json!(0));

    // No script error along the way.
    let ex = page.exceptions();
    assert!(ex.is_empty(), "{}", diag(&format!("uncaught exceptions in the page: {ex:?}")));

    // Screenshots: desktop, then phone width (no sideways scrolling there).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let desktop = page.screenshot(&root.join("target/dashboard.png")).await;
    page.viewport(390, 844, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = page.eval("document.documentElement.scrollWidth - window.innerWidth").await;
    let phone = page.screenshot(&root.join("target/dashboard-phone.png")).await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page scrolls sideways by {overflow} px at 390 px wide");
    println!(
        "{} events shown exactly once after reconnecting; screenshots: {} and {}; {:?}",
        all.len(),
        desktop.display(),
        phone.display(),
        started.elapsed()
    );

    drop(page);
    drop(browser);
    back.stop().await;
}

/// Waits until every seq of `seqs` is a feed item, exactly once.
async fn wait_seqs(page: &cdp::Page, seqs: &[u64], what: &str) {
    let list = serde_json::to_string(seqs).unwrap();
    let expr = format!(
        "(() => {{ const want = {list}; const have = {FEED_SEQS}; \
         return want.every(s => have.filter(h => h === s).length === 1); }})()"
    );
    let deadline = Instant::now() + STEP;
    loop {
        if page.eval(&expr).await == json!(true) {
            return;
        }
        if Instant::now() > deadline {
            let have = page.eval(FEED_SEQS).await;
            let state = page.eval("document.querySelector('#conn-state').textContent").await;
            panic!("{what}: the feed should hold each of {list} once; it has {have} (#conn-state: {state})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the stat cards show the server's `eventsTotal` and
/// `filesProcessed`.
async fn wait_counters(page: &cdp::Page, c: &reqwest::Client, base: &str) {
    let (status, stats) = get_json(c, &format!("{base}/api/v1/stats")).await;
    assert_eq!(status, 200);
    for key in ["eventsTotal", "filesProcessed"] {
        let want = stats[key].as_u64().unwrap_or_else(|| panic!("stats.{key}: {stats}")).to_string();
        let expr = format!("{} === {}", stat(key), json!(want));
        let deadline = Instant::now() + STEP;
        loop {
            if page.eval(&expr).await == json!(true) {
                break;
            }
            if Instant::now() > deadline {
                let shown = page.eval(&stat(key)).await;
                panic!("card {key} should read {want}, reads {shown}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_page_asks_for_a_token_when_the_server_wants_one() {
    const TEST: &str = "dashboard_page_asks_for_a_token_when_the_server_wants_one";
    let Some(chromium) = external::find(
        TEST,
        "chromium",
        &["chromium", "chromium-browser", "google-chrome"],
        "install Debian's `chromium` package",
    ) else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(90), token_flow(chromium)).await.expect("under 90 s");
}

async fn token_flow(chromium: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.auth.dashboard_tokens = vec!["dash-s3cret".into()];
    let srv = TestServer::start(config).await;
    let c = client();
    let browser = cdp::Browser::launch(&chromium).await;
    let page = browser.new_page().await;
    page.goto(&srv.url("/")).await;

    // 401 on the stream and REST: the page asks for a token, and says so.
    page.wait_for(
        "document.querySelector('#conn-state').dataset.state === 'unauthorized' \
         && !document.querySelector('#token-form').hidden",
        STEP,
        "the token form",
    )
    .await;
    let msg = page.eval("document.querySelector('#token-message').textContent").await;
    println!("token prompt: {msg}");

    // A wrong token is refused and asked again; the right one goes live.
    for (token, live) in [("wrong-token", false), ("dash-s3cret", true)] {
        page.eval(&format!(
            "(() => {{ document.querySelector('#token-input').value = {}; \
             document.querySelector('#token-form').requestSubmit(); }})()",
            json!(token)
        ))
        .await;
        if live {
            page.wait_for("document.querySelector('#conn-state').textContent === 'live'", STEP, "live with the token")
                .await;
        } else {
            page.wait_for(
                "document.querySelector('#conn-state').dataset.state === 'unauthorized' \
                 && !document.querySelector('#token-form').hidden",
                STEP,
                "the wrong token refused",
            )
            .await;
        }
    }
    let seqs = send(&c, &srv.base, batch("authed", 3)).await;
    wait_seqs(&page, &seqs, "events with a token").await;

    // The token is kept in the browser: a reload goes live without asking.
    page.goto(&srv.url("/")).await;
    page.wait_for("document.querySelector('#conn-state').textContent === 'live'", STEP, "live after a reload").await;
    assert_eq!(page.eval("document.querySelector('#token-form').hidden").await, json!(true));
    wait_seqs(&page, &seqs, "history after a reload").await;
    let ex = page.exceptions();
    assert!(ex.is_empty(), "uncaught exceptions in the page: {ex:?}");
    drop(page);
    drop(browser);
    srv.stop().await;
}
