//! What survives a restart (contract sections 1-3): in-process restarts on
//! the same store, and the real binary killed with SIGKILL or stopped with
//! SIGTERM. Also the `check-config` and `emit` CLI commands.

use crate::common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// The stats a restart must keep (everything but the live/clock fields).
fn durable_part(s: &Value) -> Value {
    let mut m = s.as_object().unwrap().clone();
    for k in ["eventsPerMinute", "activeConnections", "messagesPerMinute", "uptimeSeconds", "generatedAt"] {
        assert!(m.remove(k).is_some(), "{k} missing from {s}");
    }
    Value::Object(m)
}

#[tokio::test]
async fn a_restart_keeps_counters_totals_gauges_and_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let srv = TestServer::start(config_in(dir.path())).await;
    let r = post_json(
        &c,
        &srv.base,
        &json!([
            {"type": "ingestion_complete", "data": {"file": "a.pdf"}},
            {"type": "ingestion_complete", "data": {"filesProcessed": 5}},
            {"type": "ingestion_complete"},
            {"type": "query_complete"},
            {"type": "query_complete", "id": "q-2"},
            {"type": "error", "data": {"message": "disk"}},
            {"type": "stats_update", "data": {"totalNodes": 45, "ratio": 0.5}},
            {"type": "custom.thing"}
        ]),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["seqs"], json!([1, 2, 3, 4, 5, 6, 7, 8]));
    let r = post_json(&c, &srv.base, &json!({"type": "stats_update", "data": {"totalNodes": 46}})).await;
    assert_eq!(r.body["seqs"], json!([9]));
    let before = stats_of(&c, &srv.base).await;
    assert_eq!(before["filesProcessed"], json!(7));
    assert_eq!(before["queriesCompleted"], json!(2));
    assert_eq!(before["errors"], json!(1));
    assert_eq!(before["totalNodes"], json!(46));
    assert_eq!(before["ratio"], json!(0.5));
    assert_eq!(before["eventsTotal"], json!(9));
    assert_eq!(before["lastSeq"], json!(9));
    assert_eq!(
        before["eventsByType"],
        json!({"ingestion_complete": 3, "query_complete": 2, "error": 1, "stats_update": 2, "custom.thing": 1})
    );
    assert!(before["lastEventAt"].is_string());
    let items_before = activity_all(&c, &srv.base, "", 3).await;
    srv.stop().await;

    let srv = TestServer::start(config_in(dir.path())).await;
    let after = stats_of(&c, &srv.base).await;
    assert_eq!(durable_part(&after), durable_part(&before));
    assert_eq!(after["eventsPerMinute"], json!(0), "a fresh process has seen no events in its last minute");
    assert_eq!(activity_all(&c, &srv.base, "", 3).await, items_before);
    assert_eq!(seqs_of(&activity_all(&c, &srv.base, "type=stats_update", 50).await), vec![9, 7]);
    // Seqs continue above the old lastSeq; counters keep counting from where they were.
    let r = post_json(&c, &srv.base, &json!([{"type": "ingestion_complete"}, {"type": "query_complete", "id": "q-2"}]))
        .await;
    assert_eq!(r.body, json!({"accepted": 1, "duplicates": 1, "seqs": [10, 5]}), "{}", r.text);
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(
        (s["filesProcessed"].clone(), s["eventsTotal"].clone(), s["lastSeq"].clone()),
        (json!(8), json!(10), json!(10))
    );
    srv.stop().await;
}

#[tokio::test]
async fn duplicates_are_recognized_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let srv = TestServer::start(config_in(dir.path())).await;
    let first: Vec<Value> = (0..20).map(|i| json!({"type": "x", "id": format!("evt-{i}")})).collect();
    let r = post_json(&c, &srv.base, &Value::Array(first.clone())).await;
    assert_eq!(r.body["seqs"], json!((1..=20).collect::<Vec<u64>>()));
    srv.stop().await;

    let srv = TestServer::start(config_in(dir.path())).await;
    // The retry of a request that did get through before the restart.
    let mut retry = first[15..].to_vec();
    retry.push(json!({"type": "x", "id": "evt-new"}));
    retry.push(json!({"type": "x", "id": "evt-3"}));
    let r = post_json(&c, &srv.base, &Value::Array(retry)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body, json!({"accepted": 1, "duplicates": 6, "seqs": [16, 17, 18, 19, 20, 21, 4]}));
    let s = stats_of(&c, &srv.base).await;
    assert_eq!((s["eventsTotal"].clone(), s["lastSeq"].clone()), (json!(21), json!(21)));
    srv.stop().await;
}

// ---------------------------------------------------------------- the real binary

/// `n` events of batch `b`, with ids, of varied types.
fn batch(b: usize, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                let kind = ["ingestion_complete", "query_complete", "error", "plain"][(b + i) % 4];
                json!({"type": kind, "id": format!("b{b}-e{i}"), "data": {"b": b, "i": i}, "source": "test"})
            })
            .collect(),
    )
}

/// Checks that `items` (newest first) are exactly the `batches` x `per` events.
fn check_all_stored(items: &[Value], batches: usize, per: usize) {
    let n = batches * per;
    assert_eq!(items.len(), n, "stored events");
    let seqs = seqs_of(items);
    assert_eq!(seqs, (1..=n as u64).rev().collect::<Vec<_>>());
    for (k, e) in items.iter().rev().enumerate() {
        let (b, i) = (k / per, k % per);
        assert_eq!(e["id"], json!(format!("b{b}-e{i}")), "seq {}", k + 1);
        assert_eq!(e["data"], json!({"b": b, "i": i}));
        assert_eq!(e["source"], json!("test"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_a_202_loses_nothing() {
    const BATCHES: usize = 40;
    const PER: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let p = Process::start(dir.path(), "");
    for b in 0..BATCHES {
        let r = post_json(&c, &p.base, &batch(b, PER)).await;
        assert_eq!(r.status, 202, "{}\nlog:\n{}", r.text, p.log());
        let first = (b * PER + 1) as u64;
        assert_eq!(r.body["seqs"], json!((first..first + PER as u64).collect::<Vec<_>>()));
    }
    p.kill9(); // SIGKILL, no chance to flush anything

    let p = Process::start(dir.path(), "");
    let items = activity_all(&c, &p.base, "", 100).await;
    check_all_stored(&items, BATCHES, PER);
    let n = (BATCHES * PER) as u64;
    let s = stats_of(&c, &p.base).await;
    assert_eq!(s["eventsTotal"], json!(n), "{s}");
    assert_eq!(s["lastSeq"], json!(n));
    let quarter = n / 4;
    assert_eq!(
        s["eventsByType"],
        json!({"ingestion_complete": quarter, "query_complete": quarter, "error": quarter, "plain": quarter})
    );
    assert_eq!(
        (s["filesProcessed"].clone(), s["queriesCompleted"].clone(), s["errors"].clone()),
        (json!(quarter), json!(quarter), json!(quarter))
    );
    // A retry of the last batch is recognized; new events go on from n + 1.
    let r = post_json(&c, &p.base, &batch(BATCHES - 1, PER)).await;
    assert_eq!(r.body["duplicates"], json!(PER), "{}", r.text);
    let r = post_json(&c, &p.base, &json!({"type": "after_crash"})).await;
    assert_eq!(r.body["seqs"], json!([n + 1]));
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_requests_in_flight_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(dir.path(), "");
    let base = p.base.clone();
    // 16 producers keep sending; the process is killed under them.
    let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<(String, u64)>::new()));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (base, acked) = (base.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
            for r in 0.. {
                let body: Vec<Value> =
                    (0..5).map(|i| json!({"type": "load", "id": format!("t{t}-r{r}-e{i}")})).collect();
                let res = c
                    .post(format!("{base}/api/v1/ingest"))
                    .header("content-type", "application/json")
                    .body(Value::Array(body).to_string())
                    .send()
                    .await;
                let Ok(res) = res else { return };
                if res.status() != 202 {
                    return;
                }
                let Ok(text) = res.text().await else { return };
                let v: Value = serde_json::from_str(&text).unwrap();
                let mut a = acked.lock();
                for (i, s) in v["seqs"].as_array().unwrap().iter().enumerate() {
                    a.push((format!("t{t}-r{r}-e{i}"), s.as_u64().unwrap()));
                }
            }
        }));
    }
    let c = client();
    wait_until("some events acknowledged", Duration::from_secs(20), || {
        let n = acked.lock().len();
        async move { n >= 500 }
    })
    .await;
    p.kill9();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(15), t).await.expect("producer ends").unwrap();
    }
    let acked = acked.lock().clone();
    let p = Process::start(dir.path(), "");
    let items = activity_all(&c, &p.base, "", 500).await;
    let stored: std::collections::HashMap<u64, String> =
        items.iter().map(|e| (e["seq"].as_u64().unwrap(), e["id"].as_str().unwrap().to_string())).collect();
    for (id, seq) in &acked {
        assert_eq!(stored.get(seq), Some(id), "acknowledged event {id} (seq {seq}) lost");
    }
    let s = stats_of(&c, &p.base).await;
    assert_eq!(s["eventsTotal"], json!(items.len()), "stats match the store");
    assert_eq!(s["lastSeq"], json!(seqs_of(&items)[0]));
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let p = Process::start(dir.path(), "");
    for b in 0..5 {
        let r = post_json(&c, &p.base, &batch(b, 10)).await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let r = post_json(&c, &p.base, &json!({"type": "stats_update", "data": {"totalNodes": 9}})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let before = stats_of(&c, &p.base).await;
    let started = std::time::Instant::now();
    let status = p.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown took {:?}", started.elapsed());

    let p = Process::start(dir.path(), "");
    let items = activity_all(&c, &p.base, "", 20).await;
    check_all_stored(&items, 5, 10);
    let after = stats_of(&c, &p.base).await;
    assert_eq!(durable_part(&after), durable_part(&before));
    assert_eq!(after["totalNodes"], json!(9));
    assert_eq!(after["lastSeq"], json!(51));
    let log = p.log();
    drop(p);
    assert!(!log.contains("panicked"), "log:\n{log}");
}

// ---------------------------------------------------------------- CLI

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidewire"));
    cmd.env_remove("SIDEWIRE_CONFIG").env_remove("SIDEWIRE_TOKEN");
    for (k, _) in std::env::vars() {
        if k.starts_with("SIDEWIRE__") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("run sidewire");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidewire.toml");
    let (code, out, err) = run(bin().arg("check-config").arg(&path));
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    // An empty file is all defaults, also valid.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let (code, out, err) = run(bin().arg("check-config").arg(&empty));
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
}

#[test]
fn check_config_lists_every_error_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\n\
         listen = \"not an address\"\n\
         \n\
         [ingest]\n\
         max_batch = 0\n\
         \n\
         [ws]\n\
         max_conections = 5\n\
         \n\
         [stats]\n\
         interval_secs = 0\n",
    )
    .unwrap();
    let (code, out, err) = run(bin().arg("check-config").arg(&path));
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    let all = format!("{out}{err}");
    for (key, line) in
        [("server.listen", 2), ("ingest.max_batch", 5), ("ws.max_conections", 8), ("stats.interval_secs", 11)]
    {
        let hit = all.lines().find(|l| l.contains(key)).unwrap_or_else(|| panic!("no error names `{key}`:\n{all}"));
        assert!(hit.contains(&format!("line {line}")), "`{key}` should name line {line}: {hit}");
    }
    // A syntax error names its line too.
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\n[ws\nmax_connections = 3\n").unwrap();
    let (code, out, err) = run(bin().arg("check-config").arg(&path));
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(format!("{out}{err}").contains("line 3"), "stdout: {out}\nstderr: {err}");
    // A missing file is an error as well.
    let (code, _, err) = run(bin().arg("check-config").arg(dir.path().join("missing.toml")));
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn check_config_names_key_and_line_of_a_value_of_the_wrong_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\n[ingest]\nmax_batch = \"many\"\n").unwrap();
    let (code, out, err) = run(bin().arg("check-config").arg(&path));
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    let all = format!("{out}{err}");
    let hit = all.lines().find(|l| l.contains("many")).unwrap_or_else(|| panic!("{all}"));
    assert!(hit.contains("ingest.max_batch") && hit.contains("line 4"), "key and line missing: {hit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_prints_the_seq_or_the_servers_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.auth.ingest_tokens = vec!["emit-token".into()];
    let srv = TestServer::start(cfg).await;
    let base = srv.base.clone();
    let emit = move |args: Vec<&'static str>| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || run(bin().arg("emit").arg("--url").arg(&base).args(args)))
    };
    let ok =
        vec!["--type", "ingestion_complete", "--data", r#"{"file":"a.pdf"}"#, "--id", "cli-1", "--token", "emit-token"];
    let (code, out, err) = emit(ok.clone()).await.unwrap();
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "1");
    let (code, out, err) =
        emit(vec!["--type", "query_complete", "--source", "cli", "--token", "emit-token"]).await.unwrap();
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "2");
    // The same id again: its first seq.
    let (code, out, err) = emit(ok).await.unwrap();
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.trim().starts_with('1'), "{out}");
    // Errors carry the server's code and exit non-zero.
    for (args, want) in [
        (vec!["--type", "Bad", "--token", "emit-token"], "invalid_event"),
        (vec!["--type", "pong", "--token", "emit-token"], "reserved_type"),
        (vec!["--type", "a"], "unauthorized"),
        (vec!["--type", "a", "--token", "wrong"], "unauthorized"),
    ] {
        let (code, out, err) = emit(args.clone()).await.unwrap();
        assert!(code.is_some_and(|c| c != 0), "{args:?}: exit {code:?}");
        assert!(err.contains(want) || out.contains(want), "{args:?}: stdout: {out}\nstderr: {err}");
    }
    // The token may come from SIDEWIRE_TOKEN.
    let base = srv.base.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(bin().env("SIDEWIRE_TOKEN", "emit-token").args(["emit", "--url", &base, "--type", "error"]))
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "3");
    let c = client();
    let items = activity_all(&c, &srv.base, "", 10).await;
    assert_eq!(seqs_of(&items), vec![3, 2, 1]);
    assert_eq!(items[2]["data"], json!({"file": "a.pdf"}));
    assert_eq!(items[1]["source"], json!("cli"));
    // A server that is not there: non-zero, no panic.
    let (port, _reserved) = refused_port();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(bin().args(["emit", "--url", &format!("http://127.0.0.1:{port}"), "--type", "a"]))
    })
    .await
    .unwrap();
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}");
    assert!(!err.contains("panicked"), "{err}");
    srv.stop().await;
}
