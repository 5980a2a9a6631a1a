//! Repeated warnings do not flood the log (issue 14): the real binary with a
//! "full disk" (a file-size limit, so SQLite's writes fail with EFBIG) under
//! ingest traffic, and invalid WebSocket messages from many connections.
//! The first occurrence is logged in full, then one summary line per 10 s
//! with the count; the counters stay exact.

use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The binary under `sh`, with SIGXFSZ ignored (inherited through exec) and
/// files limited to 2 MiB: once SQLite's WAL or database reaches that, every
/// write fails, as on a full disk. Log lines are collected from a pipe (the
/// limit applies to files only).
struct FullDisk {
    child: Child,
    base: String,
    lines: Arc<parking_lot::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl FullDisk {
    fn start() -> FullDisk {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("sidewire.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[persist]\nsqlite_path = {:?}\n[telemetry]\nlog_format = \"pretty\"\n",
            dir.path().join("sidewire.db").display().to_string()
        );
        std::fs::write(&cfg, text).unwrap();
        let mut child = Command::new("sh")
            .args(["-c", "trap '' XFSZ; ulimit -f 4096 && exec \"$0\" serve --config \"$1\""])
            .arg(env!("CARGO_BIN_EXE_sidewire"))
            .arg(&cfg)
            .current_dir(dir.path())
            .env_remove("SIDEWIRE_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sidewire under sh");
        let lines = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().push(line);
            }
        });
        // Started on port 0: its `sidewire listening` line says which it got.
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Some(addr) = listening_addr(&lines.lock().join("\n")) {
                break addr;
            }
            assert!(Instant::now() < deadline, "the server did not come up: {:?}", lines.lock());
            std::thread::sleep(Duration::from_millis(25));
        };
        FullDisk { child, base: format!("http://{addr}"), lines, _dir: dir }
    }

    /// Log lines so far that contain `needle`.
    fn lines_with(&self, needle: &str) -> Vec<String> {
        self.lines.lock().iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn metric(c: &reqwest::Client, base: &str, sample: &str) -> f64 {
    let text = get_reply(c, &format!("{base}/metrics")).await.text;
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// The count in a summary line: `<what>: N more time(s) in the last 10 s`.
fn summarized(lines: &[String], what: &str) -> u64 {
    let marker = format!("{what}: ");
    lines.iter().filter_map(|l| l.split_once(&marker)?.1.split(' ').next()?.parse::<u64>().ok()).sum()
}

#[tokio::test]
async fn a_full_disk_and_a_fleet_of_bad_clients_log_a_line_per_10_s_with_exact_counts() {
    let srv = FullDisk::start();
    let c = client();
    // Fill the "disk": large events until the store refuses.
    let big = json!({"type": "filler", "data": {"pad": "x".repeat(60_000)}});
    let mut full = false;
    for _ in 0..400 {
        if post_json(&c, &srv.base, &big).await.status == 503 {
            full = true;
            break;
        }
    }
    assert!(full, "the store never failed under a 2 MiB file-size limit");
    let first_failure = Instant::now();

    // At least three seconds of traffic from four producers: hundreds of
    // failures (on a loaded machine up to 6 s, until there are 150; the
    // judging below must start within 9 s of the first failure).
    let flood_end = Instant::now() + Duration::from_secs(3);
    let flood_cap = Instant::now() + Duration::from_secs(6);
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producers: Vec<_> = (0..4)
        .map(|i| {
            let (c, base, total) = (c.clone(), srv.base.clone(), total.clone());
            tokio::spawn(async move {
                let mut refused = 0u64;
                while Instant::now() < flood_end
                    || (Instant::now() < flood_cap && total.load(std::sync::atomic::Ordering::SeqCst) < 150)
                {
                    let r = post_json(&c, &base, &json!({"type": "flood", "data": {"producer": i}})).await;
                    refused += u64::from(r.status == 503);
                    total.fetch_add(u64::from(r.status == 503), std::sync::atomic::Ordering::SeqCst);
                }
                refused
            })
        })
        .collect();
    // Meanwhile ten dashboards send ten invalid messages each.
    for _ in 0..10 {
        let url = format!("{}/api/v1/ws/dashboard", srv.base.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        for i in 0..10 {
            ws.send(Message::Text(format!("not json {i}").into())).await.unwrap();
        }
        // A whole closing handshake: the server's close comes after it read
        // every message (dropping the socket early could reset unread ones).
        ws.close(None).await.unwrap();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }
    let mut refused = 0;
    for p in producers {
        refused += p.await.unwrap();
    }
    assert!(refused >= 100, "the flood produced only {refused} refusals");
    wait_until("all invalid messages counted", Duration::from_secs(5), || {
        let (c, base) = (c.clone(), srv.base.clone());
        async move { metric(&c, &base, "sidewire_ws_invalid_messages_total").await == 100.0 }
    })
    .await;

    // Within the first 10 s: one full line of each, nothing more.
    assert!(first_failure.elapsed() < Duration::from_secs(9), "the test itself took too long to judge");
    let persist_lines = srv.lines_with("persist failed");
    assert_eq!(persist_lines.len(), 1, "one line for {refused}+ persist failures: {persist_lines:#?}");
    let ws_lines = srv.lines_with("ignored an invalid client message");
    assert_eq!(ws_lines.len(), 1, "one line for 100 invalid messages: {ws_lines:#?}");

    // Then one summary line each, which accounts for every occurrence.
    wait_until("the summary lines", Duration::from_secs(15), || {
        let done = srv.lines_with("more time(s) in the last 10 s").len() >= 2;
        async move { done }
    })
    .await;
    let failures = metric(&c, &srv.base, r#"sidewire_persist_failures_total{plugin="sqlite"}"#).await as u64;
    assert!(failures >= 100, "{failures}");
    let persist_lines = srv.lines_with("persist failed");
    assert_eq!(persist_lines.len(), 2, "{persist_lines:#?}");
    assert_eq!(1 + summarized(&persist_lines, "persist failed"), failures, "{persist_lines:#?}");
    let ws_lines = srv.lines_with("ignored an invalid client message");
    assert_eq!(ws_lines.len(), 2, "{ws_lines:#?}");
    assert_eq!(1 + summarized(&ws_lines, "ignored an invalid client message"), 100, "{ws_lines:#?}");
}
