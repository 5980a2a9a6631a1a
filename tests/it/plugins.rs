//! One contract, run against every built-in persist plugin: the activity API
//! (section 4), stats (section 3), duplicates (section 2) and, for stores that
//! persist, restarts.

use crate::common::*;
use serde_json::{json, Value};
use sidewire::config::{Config, PluginKind};

/// One accepted event as the test remembers it.
#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    kind: String,
    id: Option<String>,
    data: Value,
}

fn sqlite(dir: &std::path::Path) -> Config {
    config_in(dir)
}

fn memory(dir: &std::path::Path) -> Config {
    with_plugin(config_in(dir), PluginKind::Memory)
}

fn jsonl(dir: &std::path::Path) -> Config {
    with_plugin(config_in(dir), PluginKind::Jsonl)
}

/// Ingests 30 events in 3 requests: types a/b/c in turn, every 7th a gauge
/// report. Returns them in seq order.
async fn fill(c: &reqwest::Client, base: &str) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut n = 0;
    for req in 0..3 {
        let mut batch = Vec::new();
        for _ in 0..10 {
            n += 1;
            let ev = if n % 7 == 0 {
                json!({"type": "stats_update", "data": {"g1": n, "label": "x"}})
            } else {
                let kind = ["a", "b", "c"][n % 3];
                if n % 2 == 0 {
                    json!({"type": kind, "data": {"n": n, "nested": {"req": req}}, "id": format!("id-{n}")})
                } else {
                    json!({"type": kind, "data": {"n": n}})
                }
            };
            batch.push(ev);
        }
        let r = post_json(c, base, &Value::Array(batch.clone())).await;
        assert_eq!(r.status, 202, "{}", r.text);
        assert_eq!(r.body["accepted"], json!(10), "{}", r.text);
        for (ev, seq) in batch.iter().zip(r.body["seqs"].as_array().unwrap()) {
            sent.push(Sent {
                seq: seq.as_u64().unwrap(),
                kind: ev["type"].as_str().unwrap().to_string(),
                id: ev.get("id").and_then(Value::as_str).map(String::from),
                data: ev["data"].clone(),
            });
        }
    }
    assert!(sent.windows(2).all(|w| w[0].seq < w[1].seq), "seqs increase in acceptance order");
    sent
}

/// The expected items for a filter, newest first.
fn expect(sent: &[Sent], keep: impl Fn(&Sent) -> bool) -> Vec<u64> {
    sent.iter().rev().filter(|s| keep(s)).map(|s| s.seq).collect()
}

async fn seqs(c: &reqwest::Client, base: &str, query: &str) -> (Vec<u64>, Option<u64>) {
    let (items, next) = activity_page(c, base, query).await;
    (seqs_of(&items), next)
}

/// Section 4 against a fresh store built from `config`.
async fn activity_contract(config: Config) {
    let c = client();
    let srv = TestServer::start(config).await;
    let b = srv.base.as_str();
    let (items, next) = activity_page(&c, b, "").await;
    assert!(items.is_empty() && next.is_none(), "a fresh store is empty");
    let s = stats_of(&c, b).await;
    assert_eq!(
        (s["eventsTotal"].clone(), s["lastSeq"].clone(), s["lastEventAt"].clone()),
        (json!(0), json!(0), Value::Null)
    );

    let sent = fill(&c, b).await;
    let plain = |s: &Sent| s.kind != "stats_update";
    let all_plain = expect(&sent, plain);
    assert_eq!(all_plain.len(), 26);

    // Default: newest first, gauge reports left out, a single page.
    let (items, next) = activity_page(&c, b, "").await;
    assert_eq!(seqs_of(&items), all_plain);
    assert_eq!(next, None);
    // Each item is the stored event.
    for item in &items {
        let s = sent.iter().find(|s| s.seq == item["seq"].as_u64().unwrap()).unwrap();
        assert_eq!(item["type"], json!(s.kind));
        assert_eq!(item["data"], s.data);
        assert_eq!(item.get("id").and_then(Value::as_str), s.id.as_deref());
        assert!(item.get("source").is_none());
        let ts = item["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    }

    // limit and nextBefore.
    let (page, next) = seqs(&c, b, "limit=5").await;
    assert_eq!(page, all_plain[..5]);
    assert_eq!(next, Some(all_plain[4]));
    let (page, next) = seqs(&c, b, &format!("limit=5&before={}", next.unwrap())).await;
    assert_eq!(page, all_plain[5..10]);
    assert_eq!(next, Some(all_plain[9]));
    let (page, next) = seqs(&c, b, "limit=26").await;
    assert_eq!((page.len(), next), (26, None), "exactly all: no next page");
    let (page, next) = seqs(&c, b, "limit=25").await;
    assert_eq!((page.len(), next), (25, Some(all_plain[24])));
    let (page, next) = seqs(&c, b, &format!("limit=25&before={}", all_plain[24])).await;
    assert_eq!((page, next), (vec![all_plain[25]], None));
    for size in [1, 3, 7, 500] {
        assert_eq!(seqs_of(&activity_all(&c, b, "", size).await), all_plain, "pages of {size}");
    }

    // type filters.
    let (page, _) = seqs(&c, b, "type=a").await;
    assert_eq!(page, expect(&sent, |s| s.kind == "a"));
    let (page, _) = seqs(&c, b, "type=a&type=c").await;
    assert_eq!(page, expect(&sent, |s| s.kind == "a" || s.kind == "c"));
    let (page, _) = seqs(&c, b, "type=stats_update").await;
    assert_eq!(page, expect(&sent, |s| s.kind == "stats_update"));
    assert_eq!(page.len(), 4);
    let (page, _) = seqs(&c, b, "type=stats_update&type=b").await;
    assert_eq!(page, expect(&sent, |s| s.kind == "stats_update" || s.kind == "b"));
    let (page, next) = seqs(&c, b, "type=nothing_like_it").await;
    assert_eq!((page, next), (vec![], None));
    let bs = expect(&sent, |s| s.kind == "b");
    assert_eq!(seqs_of(&activity_all(&c, b, "type=b", 2).await), bs, "paging within a type");
    let (page, next) = seqs(&c, b, "type=b&limit=2").await;
    assert_eq!((page, next), (bs[..2].to_vec(), Some(bs[1])));

    // before / after.
    let mid = sent[14].seq;
    let low = sent[4].seq;
    let (page, _) = seqs(&c, b, &format!("before={mid}")).await;
    assert_eq!(page, expect(&sent, |s| plain(s) && s.seq < mid));
    let (page, _) = seqs(&c, b, &format!("after={mid}")).await;
    assert_eq!(page, expect(&sent, |s| plain(s) && s.seq > mid));
    let (page, _) = seqs(&c, b, &format!("after={low}&before={mid}")).await;
    assert_eq!(page, expect(&sent, |s| plain(s) && s.seq > low && s.seq < mid));
    let (page, next) = seqs(&c, b, &format!("after={low}&limit=3")).await;
    let newer = expect(&sent, |s| plain(s) && s.seq > low);
    assert_eq!((page, next), (newer[..3].to_vec(), Some(newer[2])), "after + limit: the newest ones");
    let (page, _) = seqs(&c, b, &format!("after={low}&before={mid}&type=a&type=stats_update")).await;
    assert_eq!(page, expect(&sent, |s| (s.kind == "a" || s.kind == "stats_update") && s.seq > low && s.seq < mid));
    let (page, next) = seqs(&c, b, &format!("before={}", sent[0].seq)).await;
    assert_eq!((page, next), (vec![], None));
    let (page, next) = seqs(&c, b, &format!("after={}", sent[29].seq)).await;
    assert_eq!((page, next), (vec![], None));
    let (page, _) = seqs(&c, b, &format!("after={}&before={}", mid, mid + 1)).await;
    assert!(page.is_empty());

    // Stats of the same events.
    let s = stats_of(&c, b).await;
    assert_eq!(s["eventsTotal"], json!(30));
    assert_eq!(s["lastSeq"], json!(sent[29].seq));
    let mut by_type = serde_json::Map::new();
    for e in &sent {
        let n = by_type.get(&e.kind).and_then(Value::as_u64).unwrap_or(0);
        by_type.insert(e.kind.clone(), json!(n + 1));
    }
    assert_eq!(by_type.len(), 4);
    assert_eq!(s["eventsByType"], Value::Object(by_type));
    assert_eq!(s["g1"], json!(28), "the last gauge value");
    assert!(s.get("label").is_none(), "non-numeric gauge fields are ignored");
    assert!(s["lastEventAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(s["eventsPerMinute"], json!(30));
    for k in ["filesProcessed", "queriesCompleted", "errors"] {
        assert_eq!(s[k], json!(0), "{k}");
    }
    srv.stop().await;
}

/// Duplicates within one process.
async fn dedupe_contract(config: Config) {
    let c = client();
    let srv = TestServer::start(config).await;
    let b = srv.base.as_str();
    let r = post_json(&c, b, &json!([{"type": "a", "id": "d-1"}, {"type": "a", "id": "d-2"}])).await;
    let first: Vec<u64> = r.body["seqs"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let r =
        post_json(&c, b, &json!([{"type": "a", "id": "d-2"}, {"type": "b", "id": "d-3"}, {"type": "b", "id": "d-1"}]))
            .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let seqs = r.body["seqs"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(r.body["accepted"], json!(1));
    assert_eq!(r.body["duplicates"], json!(2));
    assert_eq!((seqs[0], seqs[2]), (first[1], first[0]));
    assert!(seqs[1] > first[1]);
    let s = stats_of(&c, b).await;
    assert_eq!(s["eventsTotal"], json!(3));
    assert_eq!(s["eventsByType"], json!({"a": 2, "b": 1}));
    assert_eq!(activity_all(&c, b, "", 50).await.len(), 3);
    srv.stop().await;
}

/// A store that persists: everything is back after a restart.
async fn restart_contract(make: impl Fn(&std::path::Path) -> Config) {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let srv = TestServer::start(make(dir.path())).await;
    let sent = fill(&c, &srv.base).await;
    let r = post_json(
        &c,
        &srv.base,
        &json!([{"type": "ingestion_complete", "data": {"filesProcessed": 4}}, {"type": "error"}]),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let last = r.body["seqs"][1].as_u64().unwrap();
    let before = stats_of(&c, &srv.base).await;
    let items = activity_all(&c, &srv.base, "", 50).await;
    let gauges = activity_all(&c, &srv.base, "type=stats_update", 50).await;
    srv.stop().await;

    let srv = TestServer::start(make(dir.path())).await;
    let after = stats_of(&c, &srv.base).await;
    for k in
        ["eventsTotal", "eventsByType", "lastSeq", "lastEventAt", "g1", "filesProcessed", "errors", "queriesCompleted"]
    {
        assert_eq!(after[k], before[k], "{k} after restart");
    }
    assert_eq!(after["eventsTotal"], json!(32));
    assert_eq!(after["filesProcessed"], json!(4));
    assert_eq!(activity_all(&c, &srv.base, "", 50).await, items);
    assert_eq!(activity_all(&c, &srv.base, "type=stats_update", 50).await, gauges);
    let r = post_json(&c, &srv.base, &json!({"type": "a"})).await;
    assert_eq!(r.body["seqs"], json!([last + 1]), "{}", r.text);
    assert!(sent.iter().all(|s| s.seq < last));
    srv.stop().await;
}

/// A retry after a restart is still a duplicate (ids within the window).
async fn dedupe_across_restart_contract(make: impl Fn(&std::path::Path) -> Config) {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let srv = TestServer::start(make(dir.path())).await;
    let r = post_json(&c, &srv.base, &json!([{"type": "a", "id": "r-1"}, {"type": "a", "id": "r-2"}])).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let first = r.body["seqs"].clone();
    srv.stop().await;
    let srv = TestServer::start(make(dir.path())).await;
    let r = post_json(&c, &srv.base, &json!([{"type": "a", "id": "r-1"}, {"type": "a", "id": "r-2"}])).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body, json!({"accepted": 0, "duplicates": 2, "seqs": first}));
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(2));
    assert_eq!(activity_all(&c, &srv.base, "", 50).await.len(), 2, "stored once");
    srv.stop().await;
}

// ---------------------------------------------------------------- sqlite

#[tokio::test]
async fn sqlite_activity() {
    let dir = tempfile::tempdir().unwrap();
    activity_contract(sqlite(dir.path())).await;
}

#[tokio::test]
async fn sqlite_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    dedupe_contract(sqlite(dir.path())).await;
}

#[tokio::test]
async fn sqlite_restart() {
    restart_contract(sqlite).await;
}

#[tokio::test]
async fn sqlite_dedupe_across_restart() {
    dedupe_across_restart_contract(sqlite).await;
}

fn sqlite_queued(dir: &std::path::Path) -> Config {
    let mut c = config_in(dir);
    c.persist.ack = sidewire::config::AckMode::Queued;
    c
}

/// Queued ack answers before storing: ids are looked up in the store first.
#[tokio::test]
async fn sqlite_queued_dedupe_across_restart() {
    dedupe_across_restart_contract(sqlite_queued).await;
}

/// After a restart the window of recent ids is empty, so old duplicates are
/// found by the insert itself (the batch is refused and sequenced again):
/// mixed with new events in the same request and in concurrent requests of
/// the same group commit, they keep their first seqs, the new events get
/// consecutive seqs with no gap, and stats count only the new ones.
#[tokio::test]
async fn sqlite_old_duplicates_among_new_events_leave_no_seq_gap() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let srv = TestServer::start(sqlite(dir.path())).await;
    let old: Vec<Value> = (0..20).map(|i| json!({"type": "a", "id": format!("old-{i}")})).collect();
    let r = post_json(&c, &srv.base, &json!(old)).await;
    assert_eq!(r.body["accepted"], json!(20), "{}", r.text);
    srv.stop().await;

    let srv = TestServer::start(sqlite(dir.path())).await;
    let base = srv.base.clone();
    // 8 concurrent requests, each: an old id, a new id, another old id.
    let mut tasks = Vec::new();
    for k in 0..8 {
        let (c, base) = (c.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!([
                {"type": "a", "id": format!("old-{k}")},
                {"type": "b", "id": format!("new-{k}")},
                {"type": "a", "id": format!("old-{}", k + 10)},
            ]);
            post_json(&c, &base, &body).await
        }));
    }
    let mut new_seqs = Vec::new();
    for (k, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 202, "{}", r.text);
        assert_eq!((r.body["accepted"].clone(), r.body["duplicates"].clone()), (json!(1), json!(2)), "{}", r.text);
        assert_eq!(r.body["seqs"][0], json!(k as u64 + 1), "old-{k} keeps its first seq");
        assert_eq!(r.body["seqs"][2], json!(k as u64 + 11), "old-{} keeps its first seq", k + 10);
        new_seqs.push(r.body["seqs"][1].as_u64().unwrap());
    }
    new_seqs.sort_unstable();
    assert_eq!(new_seqs, (21..29).collect::<Vec<u64>>(), "new events get consecutive seqs");
    let s = stats_of(&c, &srv.base).await;
    assert_eq!(s["eventsTotal"], json!(28));
    assert_eq!(s["lastSeq"], json!(28));
    assert_eq!(s["eventsByType"], json!({"a": 20, "b": 8}));
    assert_eq!(activity_all(&c, &srv.base, "", 100).await.len(), 28, "each event stored once");
    srv.stop().await;
}

// ---------------------------------------------------------------- memory

#[tokio::test]
async fn memory_activity() {
    let dir = tempfile::tempdir().unwrap();
    activity_contract(memory(dir.path())).await;
}

#[tokio::test]
async fn memory_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    dedupe_contract(memory(dir.path())).await;
}

#[tokio::test]
async fn memory_seqs_are_never_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let srv = TestServer::start(memory(dir.path())).await;
    let r = post_json(&c, &srv.base, &json!([{"type": "a"}, {"type": "a"}])).await;
    let old = r.body["seqs"][1].as_u64().unwrap();
    srv.stop().await;
    let srv = TestServer::start(memory(dir.path())).await;
    let r = post_json(&c, &srv.base, &json!({"type": "a"})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(r.body["seqs"][0].as_u64().unwrap() > old, "{} after {old}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn memory_keeps_at_most_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = memory(dir.path());
    cfg.persist.memory_capacity = 10;
    let c = client();
    let srv = TestServer::start(cfg).await;
    let batch: Vec<Value> = (0..25).map(|i| json!({"type": "a", "data": {"i": i}})).collect();
    let r = post_json(&c, &srv.base, &Value::Array(batch)).await;
    let seqs: Vec<u64> = r.body["seqs"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let items = activity_all(&c, &srv.base, "", 50).await;
    assert_eq!(seqs_of(&items), seqs[15..].iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(25), "stats count every event");
    srv.stop().await;
}

// ---------------------------------------------------------------- jsonl
// jsonl cannot answer queries: activity comes from the in-memory ring, which
// must behave the same, and `recover` refills it after a restart.

#[tokio::test]
async fn jsonl_activity_from_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    activity_contract(jsonl(dir.path())).await;
}

#[tokio::test]
async fn jsonl_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    dedupe_contract(jsonl(dir.path())).await;
}

#[tokio::test]
async fn jsonl_restart() {
    restart_contract(jsonl).await;
}

#[tokio::test]
async fn jsonl_dedupe_across_restart() {
    dedupe_across_restart_contract(jsonl).await;
}

#[tokio::test]
async fn jsonl_writes_one_wire_json_line_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let srv = TestServer::start(jsonl(dir.path())).await;
    let r = post_json(
        &c,
        &srv.base,
        &json!([{"type": "a", "id": "j-1", "source": "s1"}, {"type": "b", "data": {"k": [1, 2]}}]),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    // Durable ack: the lines are in the file when the 202 arrives.
    let text = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let items = activity_all(&c, &srv.base, "", 50).await;
    assert_eq!(lines, items.into_iter().rev().collect::<Vec<_>>());
    assert!(text.ends_with('\n'));
    srv.stop().await;
}

#[tokio::test]
async fn jsonl_ring_is_bounded_by_activity_buffer_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = jsonl(dir.path());
    cfg.activity.buffer_size = 8;
    let c = client();
    let srv = TestServer::start(cfg.clone()).await;
    let batch: Vec<Value> = (0..20).map(|i| json!({"type": "a", "data": {"i": i}})).collect();
    let r = post_json(&c, &srv.base, &Value::Array(batch)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let items = activity_all(&c, &srv.base, "", 50).await;
    assert_eq!(seqs_of(&items), (13..=20).rev().collect::<Vec<u64>>());
    srv.stop().await;
    let srv = TestServer::start(cfg).await;
    let items = activity_all(&c, &srv.base, "", 50).await;
    assert_eq!(seqs_of(&items), (13..=20).rev().collect::<Vec<u64>>(), "refilled from the file");
    srv.stop().await;
}

// ---------------------------------------------------------------- postgres
// On the machine's PostgreSQL, a database per test (skipped without it
// unless SIDEWIRE_TEST_REQUIRE lists `postgres`).

use crate::common::services::Db;

fn postgres(db: &Db) -> impl Fn(&std::path::Path) -> Config + '_ {
    move |dir| {
        let mut c = with_plugin(config_in(dir), PluginKind::Postgres);
        c.persist.postgres_url = format!("postgres://postgres@127.0.0.1:5432/{}", db.name).as_str().into();
        c
    }
}

#[tokio::test]
async fn postgres_activity() {
    let Some(db) = Db::create("postgres_activity").await else { return };
    let dir = tempfile::tempdir().unwrap();
    activity_contract(postgres(&db)(dir.path())).await;
}

#[tokio::test]
async fn postgres_dedupe() {
    let Some(db) = Db::create("postgres_dedupe").await else { return };
    let dir = tempfile::tempdir().unwrap();
    dedupe_contract(postgres(&db)(dir.path())).await;
}

#[tokio::test]
async fn postgres_restart() {
    let Some(db) = Db::create("postgres_restart").await else { return };
    restart_contract(postgres(&db)).await;
}

#[tokio::test]
async fn postgres_dedupe_across_restart() {
    let Some(db) = Db::create("postgres_dedupe_across_restart").await else { return };
    dedupe_across_restart_contract(postgres(&db)).await;
}

/// A store made by schema 4 (ids and types in the database's collation, a
/// B-tree on `stored_ms`) is upgraded in place by the next start: every
/// event kept with its seq, its ids still deduped, numbering going on.
#[tokio::test]
async fn postgres_schema_4_store_upgrades_in_place() {
    let Some(db) = Db::create("postgres_schema_4_upgrade").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let make = postgres(&db);
    let c = client();
    let srv = TestServer::start(make(dir.path())).await;
    let batch: Vec<Value> = (0..30).map(|i| json!({"type": format!("t{}", i % 3), "id": format!("u-{i}")})).collect();
    let r = post_json(&c, &srv.base, &Value::Array(batch.clone())).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let first = r.body["seqs"].clone();
    srv.stop().await;
    // Back to what schema 4 left.
    db.execute(
        "ALTER TABLE sidewire_events
             ALTER COLUMN id TYPE TEXT COLLATE \"default\",
             ALTER COLUMN type TYPE TEXT COLLATE \"default\";
         DROP INDEX sidewire_events_by_stored;
         CREATE INDEX sidewire_events_by_stored ON sidewire_events (stored_ms);
         UPDATE sidewire_schema SET version = 4;",
    )
    .await;
    let srv = TestServer::start(make(dir.path())).await;
    assert_eq!(db.query_one_i64("SELECT version::int8 FROM sidewire_schema").await, 5);
    let collation = "SELECT coalesce(string_agg(collation_name, ',' ORDER BY column_name), '')
                       FROM information_schema.columns
                      WHERE table_name = 'sidewire_events' AND column_name IN ('id', 'type')";
    assert_eq!(db.query_one_string(collation).await, "C,C");
    let method = "SELECT am.amname::text FROM pg_class i JOIN pg_am am ON am.oid = i.relam
                   WHERE i.relname = 'sidewire_events_by_stored'";
    assert_eq!(db.query_one_string(method).await, "brin");
    let r = post_json(&c, &srv.base, &Value::Array(batch)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body, json!({"accepted": 0, "duplicates": 30, "seqs": first}), "ids still deduped");
    let r = post_json(&c, &srv.base, &json!([{"type": "t1", "id": "u-new"}])).await;
    assert_eq!(r.body["seqs"], json!([31]), "{}", r.text);
    let items = activity_all(&c, &srv.base, "type=t1", 50).await;
    assert_eq!(seqs_of(&items), vec![31, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2], "per-type reads");
    assert_eq!(stats_of(&c, &srv.base).await["eventsTotal"], json!(31));
    srv.stop().await;
}
