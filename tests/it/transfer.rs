//! `sidewire export` / `sidewire import` (issue 13), run as the real binary:
//! a SQLite history moves to a fresh SQLite store and to a jsonl store
//! exactly (same events byte for byte, same seqs, same stats), filters
//! select, and an import that would collide is refused with a clear error.

use crate::common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Writes a config for `plugin` in `dir` and returns its path.
fn config_file(dir: &Path, name: &str, plugin: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[persist]\nplugin = \"{plugin}\"\nsqlite_path = {:?}\njsonl_path = {:?}\n",
        dir.join(format!("{name}.db")).display().to_string(),
        dir.join(format!("{name}.jsonl")).display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn sidewire(args: &[&str], config: &Path, stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidewire"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SIDEWIRE_CONFIG")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidewire");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    child.wait_with_output().unwrap()
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(out.status.success(), "{what} failed: {}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
}

/// The stats that an import must reproduce (not the live windows, and not
/// `lastEventAt`, which an import sets to the newest imported timestamp).
fn durable(stats: &Value) -> Value {
    let mut s = stats.clone();
    for k in
        ["eventsPerMinute", "activeConnections", "messagesPerMinute", "uptimeSeconds", "generatedAt", "lastEventAt"]
    {
        s.as_object_mut().unwrap().remove(k);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_moves_exactly_and_collisions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src_cfg = config_file(d, "src", "sqlite");

    // A history with every kind of event: ids, sources, counters, gauges,
    // client timestamps in other offsets, a duplicate, unicode data.
    let mut config = config_in(d);
    config.persist.sqlite_path = d.join("src.db");
    let srv = TestServer::start(config).await;
    let c = client();
    let mut batch = Vec::new();
    for i in 0..300 {
        batch.push(match i % 6 {
            0 => json!({"type": "ingestion_complete", "data": {"file": format!("f{i}.pdf"), "filesProcessed": 2}, "id": format!("in-{i}")}),
            1 => json!({"type": "query_complete", "data": {"q": "grüße ✓", "latencyMs": i}, "source": "backend-2"}),
            2 => json!({"type": "error", "data": {"nested": {"deep": [1, 2, {"x": null}]}}, "timestamp": "2025-12-31T23:00:00+03:00"}),
            3 => json!({"type": "stats_update", "data": {"totalNodes": i, "label": "x"}}),
            4 => json!({"type": "custom.thing:v1", "id": format!("c-{i}"), "source": "b1"}),
            _ => json!({"type": "ingestion_complete"}),
        });
        if batch.len() == 50 {
            assert_eq!(ingest(&c, &srv.base, &json!(batch)).await.0, 202);
            batch.clear();
        }
    }
    let (status, dup) = ingest(&c, &srv.base, &json!({"type": "ingestion_complete", "id": "in-0"})).await;
    assert_eq!((status, dup["duplicates"].clone()), (202, json!(1)));
    let src_stats = stats_of(&c, &srv.base).await;
    let src_items = activity_all(&c, &srv.base, "", 100).await;
    srv.stop().await;
    assert_eq!(src_stats["eventsTotal"], 300);

    // Export: every stored event, gauge reports included, in seq order.
    let exported = ok(sidewire(&["export"], &src_cfg, None), "export");
    let events = lines(&exported);
    assert_eq!(events.len(), 300);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());

    // Into a fresh SQLite store: the same events, byte for byte, and stats.
    let dst_cfg = config_file(d, "dst", "sqlite");
    let out = sidewire(&["import"], &dst_cfg, Some(&exported));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(out, "import");
    assert!(stderr.contains("imported 300 events"), "{stderr}");
    let again = ok(sidewire(&["export"], &dst_cfg, None), "export of the copy");
    assert!(again == exported, "the copy exports differently");
    let mut config = config_in(d);
    config.persist.sqlite_path = d.join("dst.db");
    let srv = TestServer::start(config.clone()).await;
    let dst_stats = stats_of(&c, &srv.base).await;
    assert_eq!(durable(&dst_stats), durable(&src_stats));
    assert_eq!(activity_all(&c, &srv.base, "", 100).await, src_items);
    // Dedupe knows the imported ids; seqs continue above the imported ones.
    let (_, r) = ingest(&c, &srv.base, &json!([{"type": "x", "id": "c-4"}, {"type": "x"}])).await;
    assert_eq!(r["seqs"], json!([5, 301]), "{r}");
    srv.stop().await;

    // Importing the same history again collides, and says so: an import only
    // appends above every seq the store has handed out (also into a range
    // retention pruned, or seqs a failed commit skipped).
    let out = sidewire(&["import"], &dst_cfg, Some(&exported));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seq 1 is not above the store's last seq 301") && err.contains("line 1"), "{err}");
    // ... and so does an id that is already there under another seq.
    let moved =
        String::from_utf8(exported.clone()).unwrap().lines().nth(4).unwrap().replace("\"seq\":5", "\"seq\":900");
    let out = sidewire(&["import"], &dst_cfg, Some(format!("{moved}\n").as_bytes()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"c-4\"") && err.contains("already in the store as seq 5"), "{err}");

    // Into a jsonl store (its files are the same lines) and back out.
    let jsonl_cfg = config_file(d, "j", "jsonl");
    ok(sidewire(&["import"], &jsonl_cfg, Some(&exported)), "import into jsonl");
    assert_eq!(std::fs::read(d.join("j.jsonl")).unwrap(), exported);
    assert!(ok(sidewire(&["export"], &jsonl_cfg, None), "export of jsonl") == exported);
    let out = sidewire(&["import"], &jsonl_cfg, Some(&exported));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not above the store's last seq 300"));

    // Filters.
    let only = lines(&ok(sidewire(&["export", "--after-seq", "250", "--type", "error"], &src_cfg, None), "filtered"));
    assert_eq!(
        only.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![255, 261, 267, 273, 279, 285, 291, 297]
    );
    let since = lines(&ok(
        sidewire(&["export", "--since", "2026-01-01T00:00:00Z", "--type", "error"], &src_cfg, None),
        "since",
    ));
    assert!(since.is_empty(), "the error events are from 2025-12-31T20:00Z");
    let recent =
        lines(&ok(sidewire(&["export", "--since", "1h", "--type", "query_complete"], &src_cfg, None), "since 1h"));
    assert_eq!(recent.len(), 50);

    // A sidecar answering on the target's listen address: refused, unless --force.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config_file(d, "busy", "sqlite");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("127.0.0.1:0", &busy.local_addr().unwrap().to_string());
    std::fs::write(&cfg, text).unwrap();
    let out = sidewire(&["import"], &cfg, Some(&exported));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop the sidecar"), "{out:?}");
    ok(sidewire(&["import", "--force"], &cfg, Some(&exported)), "import --force");

    // Clear errors: a line that is not an export, a store that is not there.
    let out = sidewire(&["import"], &config_file(d, "other", "sqlite"), Some(b"{\"type\":\"x\"}\n"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1: no `seq`"), "{:?}", out);
    let out = sidewire(&["export"], &config_file(d, "missing", "sqlite"), None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no sqlite store"));
}

/// Moving to the cluster setup: a SQLite history into PostgreSQL (README,
/// "Moving to the cluster setup"), exactly; replicas then continue above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_history_moves_into_postgres() {
    let Some(db) = crate::common::services::Db::create("a_sqlite_history_moves_into_postgres").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src_cfg = config_file(d, "src", "sqlite");
    let mut config = config_in(d);
    config.persist.sqlite_path = d.join("src.db");
    let srv = TestServer::start(config).await;
    let c = client();
    let batch: Vec<Value> = (0..120)
        .map(|i| match i % 4 {
            0 => json!({"type": "ingestion_complete", "data": {"filesProcessed": 3}, "id": format!("in-{i}")}),
            1 => json!({"type": "stats_update", "data": {"totalNodes": i}}),
            2 => json!({"type": "query_complete", "data": {"q": "grüße"}, "source": "b2"}),
            _ => json!({"type": "error", "id": format!("e-{i}")}),
        })
        .collect();
    assert_eq!(ingest(&c, &srv.base, &json!(batch)).await.0, 202);
    let src_stats = stats_of(&c, &srv.base).await;
    let src_items = activity_all(&c, &srv.base, "", 100).await;
    srv.stop().await;
    let exported = ok(sidewire(&["export"], &src_cfg, None), "export");

    let pg_cfg = d.join("pg.toml");
    std::fs::write(
        &pg_cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[persist]\nplugin = \"postgres\"\npostgres_url = \"postgres://postgres@127.0.0.1:5432/{}\"\n",
            db.name
        ),
    )
    .unwrap();
    let out = sidewire(&["import"], &pg_cfg, Some(&exported));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    ok(out, "import into postgres");
    assert!(stderr.contains("imported 120 events"), "{stderr}");
    let again = ok(sidewire(&["export"], &pg_cfg, None), "export from postgres");
    assert!(again == exported, "the PostgreSQL copy exports differently");
    let mut config = config_in(d);
    config.persist.plugin = sidewire::config::PluginKind::Postgres;
    config.persist.postgres_url = format!("postgres://postgres@127.0.0.1:5432/{}", db.name).as_str().into();
    let srv = TestServer::start(config).await;
    assert_eq!(durable(&stats_of(&c, &srv.base).await), durable(&src_stats));
    assert_eq!(activity_all(&c, &srv.base, "", 100).await, src_items);
    let (_, r) = ingest(&c, &srv.base, &json!([{"type": "x", "id": "in-0"}, {"type": "x"}])).await;
    assert_eq!(r["seqs"], json!([1, 121]), "{r}");
    srv.stop().await;
    // A second import collides.
    assert!(!sidewire(&["import"], &pg_cfg, Some(&exported)).status.success());
}

/// A plugin without export/import (memory, webhook) is refused by name,
/// before anything is read or written.
#[test]
fn a_plugin_that_cannot_export_or_import_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "mem", "memory");
    let line = br#"{"type":"x","timestamp":"2025-12-31T20:00:00Z","seq":1}"#;
    for (args, stdin, what) in [(&["export"][..], None, "export"), (&["import"][..], Some(&line[..]), "import")] {
        let out = sidewire(args, &config, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} into memory succeeded: {stderr}");
        assert!(stderr.contains(&format!("the memory plugin cannot {what}")), "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what} wrote {:?}", String::from_utf8_lossy(&out.stdout));
    }
}
