//! Metric exactness (contract section 6) under connection churn, plus the
//! label rules: matched routes only, capped `type` values, series at 0 from
//! start-up.

use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Every sample of `/metrics` as `series -> value` (series = name{labels}).
async fn scrape(c: &reqwest::Client, srv: &TestServer) -> HashMap<String, f64> {
    let text = c.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

const REASONS: [&str; 5] = ["client_close", "slow_consumer", "heartbeat_timeout", "error", "shutdown"];

fn disconnects(m: &HashMap<String, f64>) -> f64 {
    REASONS.iter().map(|r| get(m, &format!("sidewire_ws_disconnects_total{{reason=\"{r}\"}}"))).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_metrics_stay_exact_under_churn() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.ws.max_connections_per_ip = 10_000;
    cfg.ws.connect_rate_per_ip_per_min = 100_000;
    let srv = TestServer::start(cfg).await;
    let c = client();

    let m0 = scrape(&c, &srv).await;
    for r in REASONS {
        assert!(
            m0.contains_key(&format!("sidewire_ws_disconnects_total{{reason=\"{r}\"}}")),
            "{r} missing at start-up"
        );
    }
    assert_eq!(get(&m0, "sidewire_ws_active_connections"), 0.0);

    // 200 clients; each reads its ack and first stats_update.
    let mut clients = Vec::new();
    for _ in 0..200 {
        let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url("/api/v1/ws/dashboard")).await.unwrap();
        for _ in 0..2 {
            ws.next().await.unwrap().unwrap();
        }
        clients.push(ws);
    }
    let m1 = scrape(&c, &srv).await;
    assert_eq!(get(&m1, "sidewire_ws_active_connections"), 200.0);
    assert_eq!(get(&m1, "sidewire_ws_connections_total"), 200.0);
    let (_, stats) = get_json(&c, &srv.url("/api/v1/stats")).await;
    assert_eq!(stats["activeConnections"], 200);

    // 100 close politely, 60 vanish without a close frame, 40 stay.
    let mut rest = clients.split_off(100);
    for mut ws in clients {
        ws.send(Message::Close(None)).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let stay = rest.split_off(60);
    drop(rest); // TCP closed abruptly, no close frame
    let deadline = Instant::now() + Duration::from_secs(10);
    let m2 = loop {
        let m = scrape(&c, &srv).await;
        // Both: a scrape reads the gauge and the counters at slightly
        // different instants, so a close can fall between them.
        let settled = get(&m, "sidewire_ws_active_connections") == 40.0 && disconnects(&m) >= 160.0;
        if settled || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(get(&m2, "sidewire_ws_active_connections"), 40.0);
    assert_eq!(disconnects(&m2), 160.0, "every disconnect counted once");
    assert!(get(&m2, "sidewire_ws_disconnects_total{reason=\"client_close\"}") >= 100.0);

    // Messages sent: per type, and the 60 s window agrees with /stats.
    assert_eq!(get(&m2, "sidewire_ws_messages_sent_total{type=\"connection_ack\"}"), 200.0);
    assert!(get(&m2, "sidewire_ws_messages_sent_total{type=\"stats_update\"}") >= 200.0);
    let (_, stats) = get_json(&c, &srv.url("/api/v1/stats")).await;
    assert!(stats["messagesPerMinute"].as_u64().unwrap() >= 400, "{stats}");
    assert!(get(&m2, "sidewire_ws_messages_per_minute") >= 400.0);

    // Shutdown closes the rest with reason `shutdown`; all 200 accounted for.
    let app = srv.app.clone();
    srv.stop().await;
    drop(stay);
    assert_eq!(app.metrics.ws_active_connections.get(), 0);
    let total: u64 = REASONS.iter().map(|r| app.metrics.ws_disconnects_total.with_label_values(&[r]).get()).sum();
    assert_eq!(total, 200);
    assert_eq!(app.metrics.ws_disconnects_total.with_label_values(&["shutdown"]).get(), 40);
}

#[tokio::test]
async fn http_metrics_use_matched_routes_and_type_labels_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    for p in ["/no/such/path/1", "/no/such/path/2", "/api/v1/activity/recent?limit=3"] {
        c.get(srv.url(p)).send().await.unwrap();
    }
    // 101 distinct types: the 101st and later count as `other`.
    let events: Vec<_> = (0..105).map(|i| json!({"type": format!("t{i:03}")})).collect();
    let (status, _) = ingest(&c, &srv.base, &json!(events)).await;
    assert_eq!(status, 202);
    let m = scrape(&c, &srv).await;
    let routes: Vec<&String> = m.keys().filter(|k| k.starts_with("sidewire_http_requests_total{")).collect();
    assert!(routes.iter().all(|k| !k.contains("/no/such/path")), "raw paths leaked into labels: {routes:?}");
    assert_eq!(get(&m, "sidewire_http_requests_total{route=\"not_found\",status=\"404\"}"), 2.0, "{routes:?}");
    assert_eq!(get(&m, "sidewire_http_requests_total{route=\"/api/v1/activity/recent\",status=\"200\"}"), 1.0);
    let typed = m.keys().filter(|k| k.starts_with("sidewire_ingest_events_total{type=\"t")).count();
    assert_eq!(typed, 100, "at most 100 distinct type values");
    assert_eq!(get(&m, "sidewire_ingest_events_total{type=\"other\"}"), 5.0);
    assert!(m.contains_key("process_resident_memory_bytes"), "process metrics exported");
    assert_eq!(get(&m, "sidewire_persist_failures_total{plugin=\"sqlite\"}"), 0.0);
    assert!(m.contains_key("sidewire_persist_failures_total{plugin=\"sqlite\"}"), "plugin series at 0 from start-up");
    srv.stop().await;
}

#[tokio::test]
async fn a_separate_metrics_listener_takes_metrics_off_the_public_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path());
    cfg.metrics.listen = "127.0.0.1:0".into();
    let srv = TestServer::start(cfg).await;
    let c = client();
    let private = format!("http://{}", srv.metrics_addr.expect("a metrics listener"));
    let r = c.get(format!("{private}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("sidewire_build_info"));
    assert_eq!(c.get(format!("{private}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{private}/api/v1/stats")).send().await.unwrap().status(), 404);
    let (status, body) = get_json(&c, &srv.url("/metrics")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    srv.stop().await;
    assert!(c.get(format!("{private}/metrics")).send().await.is_err(), "the metrics listener stops with the server");
}
