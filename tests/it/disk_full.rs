//! A full disk, for real (issue 13): the SQLite and the jsonl store on a
//! small tmpfs that the test mounts (as root) and fills. Ingest must answer 503
//! `persist_unavailable` with `Retry-After`, acknowledge nothing it did not
//! store, report `/readyz` 503 and count `sidewire_persist_failures_total`,
//! keep serving, and recover by itself once space returns.
//!
//! Mounting needs root: without it the test prints why and skips, unless
//! `SIDEWIRE_TEST_REQUIRE` names `mount` (then it fails). The tmpfs is
//! unmounted at the end, also when the test fails (a guard's `Drop`).

use crate::common::external;
use crate::common::*;
use serde_json::{json, Value};
use sidewire::config::PluginKind;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A mounted tmpfs; unmounted (lazily if busy) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m"), or explains why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`mount -t tmpfs` failed ({}): {} (it needs root)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Fills the filesystem of `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    loop {
        if f.write_all(&chunk).and_then(|()| f.sync_data()).is_err() {
            break;
        }
    }
    // Smaller pieces, to the last block.
    let small = vec![0u8; 512];
    while f.write_all(&small).and_then(|()| f.sync_data()).is_ok() {}
    path
}

fn failures(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("sidewire_persist_failures_total{plugin=").and_then(|r| r.split_once('}')).map(|(_, v)| v)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn status_of(c: &reqwest::Client, url: &str) -> u16 {
    c.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_refuses_honestly_and_recovers_by_itself() {
    full_disk("sqlite_on_a_full_disk_refuses_honestly_and_recovers_by_itself", PluginKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_on_a_full_disk_refuses_honestly_and_recovers_by_itself() {
    full_disk("jsonl_on_a_full_disk_refuses_honestly_and_recovers_by_itself", PluginKind::Jsonl).await;
}

async fn full_disk(test: &str, plugin: PluginKind) {
    let fs = match Tmpfs::mount("16m") {
        Ok(fs) => fs,
        Err(why) if external::is_required("mount") => {
            panic!("{test}: {why} — and SIDEWIRE_TEST_REQUIRE lists `mount`, so this is a failure")
        }
        Err(why) => {
            external::skip(test, &format!("{why} (list `mount` in SIDEWIRE_TEST_REQUIRE to make this a failure)"));
            return;
        }
    };
    let config = with_plugin(config_in(fs.path()), plugin);
    let srv = TestServer::start(config.clone()).await;
    let c = client();
    let mut acked: Vec<u64> = Vec::new();
    let (status, body) = ingest(&c, &srv.base, &json!({"type": "first", "id": "first"})).await;
    assert_eq!(status, 202, "{body}");
    acked.extend(body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()));
    assert_eq!(status_of(&c, &srv.url("/readyz")).await, 200);

    // The disk fills up (another process's file); then batches of large
    // events go in until the store refuses.
    let filler = fill(fs.path());
    // Leave a little room, so some batches still fit and the disk fills
    // between two commits, as it would in production.
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(len.saturating_sub(600_000)).unwrap();
    let big = "x".repeat(30_000);
    let mut refused = None;
    for i in 0..400 {
        let batch: Vec<Value> =
            (0..8).map(|j| json!({"type": "big", "id": format!("b-{i}-{j}"), "data": {"pad": big}})).collect();
        let r = post_json(&c, &srv.base, &json!(batch)).await;
        match r.status {
            202 => acked.extend(r.body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap())),
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    let refused = refused.expect("a full disk must refuse ingest");
    assert_reply_error(&refused, 503, "persist_unavailable", None);
    let retry: u64 = refused.header("retry-after").expect("Retry-After on the 503").parse().unwrap();
    assert!((1..=60).contains(&retry));
    println!("refused after {} acknowledged events: {}", acked.len(), refused.text);

    // Not ready, counted, but alive and serving reads.
    wait_until("/readyz 503 on a full disk", Duration::from_secs(10), || {
        let c = c.clone();
        let url = srv.url("/readyz");
        async move { status_of(&c, &url).await == 503 }
    })
    .await;
    let m = c.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(failures(&m) >= 1.0, "failures not counted:\n{m}");
    assert_eq!(status_of(&c, &srv.url("/healthz")).await, 200);
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], acked.len() as u64);
    // Still refusing while full (no spin, no crash, no partial accept).
    let batch: Vec<Value> = (0..30).map(|_| json!({"type": "big", "data": {"pad": big}})).collect();
    let r = post_json(&c, &srv.base, &json!(batch)).await;
    assert_eq!(r.status, 503, "{}", r.text);

    // Space comes back: ready again without any client sending.
    std::fs::remove_file(&filler).unwrap();
    wait_until("/readyz 200 once space returns", Duration::from_secs(15), || {
        let c = c.clone();
        let url = srv.url("/readyz");
        async move { status_of(&c, &url).await == 200 }
    })
    .await;
    let (status, body) = ingest(&c, &srv.base, &json!([{"type": "after", "id": "after-1"}, {"type": "after"}])).await;
    assert_eq!(status, 202, "{body}");
    acked.extend(body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()));

    // Everything acknowledged is stored, and nothing else.
    let stored = seqs_of(&activity_all(&c, &srv.base, "", 500).await);
    let mut want = acked.clone();
    want.sort_unstable();
    want.reverse();
    assert_eq!(stored, want);
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], acked.len() as u64);
    srv.stop().await;

    // And it survives a restart.
    let srv = TestServer::start(config).await;
    assert_eq!(seqs_of(&activity_all(&c, &srv.base, "", 500).await), want);
    srv.stop().await;
    drop(fs);
}
