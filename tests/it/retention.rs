//! Retention (issue 13) against the real server and SQLite store: a limit
//! applied by a live reload removes the oldest events; stats are not
//! reduced; activity paging and WebSocket resume behave as if the removed
//! events never existed (`truncated: true` from before the oldest kept);
//! the floor survives a restart; the store gauges and the deleted counter
//! are exported.

use crate::common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use sidewire::config::{Config, LiveConfig};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const WS: &str = "/api/v1/ws/dashboard";

/// Text messages of a WebSocket until `resume_complete` (events, then it).
async fn replay_of(srv: &TestServer, after: u64) -> (Vec<u64>, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url(&format!("{WS}?afterSeq={after}"))).await.unwrap();
    let mut seqs = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str().unwrap() {
            "connection_ack" | "stats_update" => {}
            "resume_complete" => return (seqs, v["data"].clone()),
            _ => seqs.push(v["seq"].as_u64().unwrap()),
        }
    }
}

fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok()))
}

async fn metrics_text(c: &reqwest::Client, srv: &TestServer) -> String {
    c.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_limit_removes_the_oldest_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    limit_contract(config_in(dir.path()), "sqlite").await;
}

/// The same on PostgreSQL (the floor lives in the shared head row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_reloaded_limit_removes_the_oldest_and_nothing_else_changes() {
    let Some(db) = crate::common::services::Db::create("postgres retention").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.persist.plugin = sidewire::config::PluginKind::Postgres;
    config.persist.postgres_url = format!("postgres://postgres@127.0.0.1:5432/{}", db.name).as_str().into();
    limit_contract(config, "postgres").await;
}

async fn limit_contract(config: Config, plugin_name: &str) {
    let (tx, rx) = tokio::sync::watch::channel(LiveConfig::new(config.clone()));
    let srv = TestServer::start_with(sidewire::ServerBuilder::new(config.clone()).config_channel(rx)).await;
    let c = client();

    // 200 events (ids e-1..e-200, a few types), and one gauge report.
    for chunk in 0..10 {
        let batch: Vec<Value> = (1..=20)
            .map(|i| {
                let n = chunk * 20 + i;
                let kind = ["ingestion_complete", "query_complete", "error", "other"][n % 4];
                json!({"type": kind, "id": format!("e-{n}"), "data": {"n": n}})
            })
            .collect();
        let (status, body) = ingest(&c, &srv.base, &json!(batch)).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, _) = ingest(&c, &srv.base, &json!({"type": "stats_update", "data": {"totalNodes": 7}})).await;
    assert_eq!(status, 202);
    let before = stats_of(&c, &srv.base).await;
    assert_eq!(before["eventsTotal"], 201);

    // Keep the newest 50 (a live reload; it wakes the retention task).
    let mut tighter = config.clone();
    tighter.persist.retention_max_events = 50;
    tx.send_replace(LiveConfig::new(tighter));
    let plugin = srv.app.plugin.clone();
    wait_until("retention removed the 151 oldest", Duration::from_secs(20), || {
        let p = plugin.clone();
        async move { p.as_retention().is_some_and(|r| r.retention_floor() == 151) }
    })
    .await;

    // Stats are not reduced.
    let after = stats_of(&c, &srv.base).await;
    for key in ["eventsTotal", "eventsByType", "lastSeq", "filesProcessed", "queriesCompleted", "errors", "totalNodes"]
    {
        assert_eq!(after[key], before[key], "{key}");
    }

    // Activity: the kept 50 minus the gauge report (seq 201), as if nothing else existed.
    let items = activity_all(&c, &srv.base, "", 7).await;
    assert_eq!(seqs_of(&items), (152..=200).rev().collect::<Vec<u64>>());
    let (older, next) = activity_page(&c, &srv.base, "before=152").await;
    assert!(older.is_empty() && next.is_none(), "{older:?}");

    // Resume from before the oldest kept: what is kept, truncated.
    let (seqs, done) = replay_of(&srv, 0).await;
    assert_eq!(seqs, (152..=200).collect::<Vec<u64>>());
    assert_eq!(done["truncated"], true, "{done}");
    assert_eq!(done["replayed"], 49);
    // From within the kept window: complete.
    let (seqs, done) = replay_of(&srv, 180).await;
    assert_eq!(seqs, (181..=200).collect::<Vec<u64>>());
    assert_eq!(done["truncated"], false, "{done}");

    // Metrics: deleted count, a store size, an age.
    let m = metrics_text(&c, &srv).await;
    let deleted = format!("sidewire_persist_retention_deleted_total{{plugin=\"{plugin_name}\"}}");
    assert_eq!(metric(&m, &deleted), Some(151.0), "{m}");
    wait_until("store gauges", Duration::from_secs(15), || {
        let c = c.clone();
        let url = srv.url("/metrics");
        let p = plugin_name.to_string();
        async move {
            let m = c.get(url).send().await.unwrap().text().await.unwrap();
            let gauge = |name: &str| metric(&m, &format!("{name}{{plugin=\"{p}\"}}"));
            // PostgreSQL's disk is not the sidecar's: no limit gauge there.
            gauge("sidewire_persist_store_bytes").is_some_and(|b| b > 0.0)
                && (p == "postgres" || gauge("sidewire_persist_store_limit_bytes").is_some_and(|b| b > 0.0))
                && gauge("sidewire_persist_oldest_event_age_seconds").is_some()
        }
    })
    .await;

    // New events keep flowing, and the limit keeps applying.
    let batch: Vec<Value> = (0..10).map(|i| json!({"type": "other", "data": {"i": i}})).collect();
    assert_eq!(ingest(&c, &srv.base, &json!(batch)).await.0, 202);
    tx.send_replace(LiveConfig::new({
        let mut c = config.clone();
        c.persist.retention_max_events = 40;
        c
    }));
    wait_until("the lower limit applied", Duration::from_secs(20), || {
        let p = plugin.clone();
        async move { p.as_retention().is_some_and(|r| r.retention_floor() == 171) }
    })
    .await;
    srv.stop().await;

    // The floor survives a restart: a resume from 0 is still truncated.
    let srv = TestServer::start(config.clone()).await;
    let (seqs, done) = replay_of(&srv, 0).await;
    assert_eq!(seqs, (172..=200).chain(202..=211).collect::<Vec<u64>>());
    assert_eq!(done["truncated"], true, "{done}");
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], 211);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keys_are_validated() {
    let bad = "[persist]\nretention_max_age = \"30 days\"\nretention_max_bytes = \"lots\"\n";
    let issues = Config::from_toml(bad, &[]).unwrap_err();
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, vec!["persist.retention_max_age", "persist.retention_max_bytes"], "{issues:?}");
    assert_eq!(issues[0].line, Some(2));
    let ok = Config::from_toml(
        "[persist]\nretention_max_age = \"12h\"\nretention_max_bytes = \"2GiB\"\nretention_max_events = 10\n",
        &[],
    )
    .unwrap();
    let r = ok.persist.retention();
    assert_eq!(r.max_age, Some(Duration::from_secs(12 * 3600)));
    assert_eq!((r.max_events, r.max_bytes), (Some(10), Some(2 << 30)));
    // The default keeps 30 days.
    assert_eq!(Config::default().persist.retention().max_age, Some(Duration::from_secs(30 * 86_400)));
    let off = Config::from_toml("[persist]\nretention_max_age = \"off\"\nretention_max_bytes = 0\n", &[]).unwrap();
    assert!(!off.persist.retention().is_active());
}
