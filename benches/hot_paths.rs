//! Micro-benchmarks of the hot paths (issue 6): ingest parsing and
//! validation, event encoding and the broadcast frame, stats accounting and
//! the `stats_update` message, and the SQLite group commit.
//!
//! ```sh
//! cargo bench --bench hot_paths
//! cargo bench --bench hot_paths -- sqlite   # one group
//! ```
//! Sample sizes and measurement times are kept small so the whole run stays
//! well under two minutes on a 2-core machine; figures are in
//! `docs/BENCHMARKS.md`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use sidewire::config::{Config, LiveConfig, SqliteSync};
use sidewire::event::{Event, NewEvent};
use sidewire::http::ingest::{parse_body, BodyFormat};
use sidewire::hub::Frame;
use sidewire::persist::sqlite::SqlitePlugin;
use sidewire::persist::{Batch, PersistCallback};
use sidewire::stats::{DurableStats, Stats};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default `ingest.max_batch`.
const MAX_BATCH: usize = 1000;

/// One realistic event; `i` varies the type, the id and the numbers.
fn event_json(i: usize) -> Value {
    match i % 4 {
        0 | 1 => json!({
            "type": "ingestion_complete",
            "data": {"file": format!("report-{i}.pdf"), "nodesCreated": 12 + i % 7, "filesProcessed": 3,
                     "tags": ["pdf", "finance"], "durationMs": 1234.5},
            "timestamp": "2025-12-31T20:00:00.123Z",
            "id": format!("ingest-7f3a-{i:06}"),
            "source": "backend-1",
        }),
        2 => json!({
            "type": "query_complete",
            "data": {"query": "MATCH (n) RETURN n LIMIT 10", "rows": 10, "ms": 4.2},
            "timestamp": "2025-12-31T20:00:00.456Z",
            "id": format!("query-{i:06}"),
            "source": "backend-1",
        }),
        _ => json!({
            "type": "user_login",
            "data": {"user": format!("u{i}"), "method": "sso"},
            "source": "backend-2",
        }),
    }
}

fn body(n: usize) -> Vec<u8> {
    if n == 1 {
        event_json(0).to_string().into_bytes()
    } else {
        Value::Array((0..n).map(event_json).collect()).to_string().into_bytes()
    }
}

fn live() -> Arc<LiveConfig> {
    LiveConfig::new(Config::default())
}

fn new_events(n: usize) -> Vec<NewEvent> {
    let live = live();
    parse_body(&body(n.max(2)), BodyFormat::Json, MAX_BATCH, &live.rules).unwrap().into_iter().take(n).collect()
}

/// Short runs: the whole bench must stay under ~2 minutes on 2 cores.
fn quick() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// (a) `parse_body`: JSON parse plus validation of every event.
fn ingest_parse(c: &mut Criterion) {
    let live = live();
    let mut g = c.benchmark_group("ingest_parse");
    for n in [1usize, 100] {
        let json = body(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("json", n), &json, |b, json| {
            b.iter(|| parse_body(black_box(json), BodyFormat::Json, MAX_BATCH, &live.rules).unwrap())
        });
    }
    let ndjson: Vec<u8> = (0..100).map(|i| event_json(i).to_string() + "\n").collect::<String>().into_bytes();
    g.throughput(Throughput::Elements(100));
    g.bench_with_input(BenchmarkId::new("ndjson", 100), &ndjson, |b, nd| {
        b.iter(|| parse_body(black_box(nd), BodyFormat::Ndjson, MAX_BATCH, &live.rules).unwrap())
    });
    g.finish();
}

/// (b) The wire JSON of an accepted event (encoded once) and its broadcast frame.
fn encode(c: &mut Criterion) {
    let e = new_events(1).pop().unwrap();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("event_from_new+frame", |b| {
        let mut seq = 1_000_000u64;
        b.iter(|| {
            seq += 1;
            Frame::new(Arc::new(Event::from_new(seq, black_box(&e))))
        })
    });
    g.finish();
}

/// (c) Stats: a batch applied to a copy of the durable stats (as the
/// pipeline does per group commit), and the snapshot sent as `stats_update`.
fn stats(c: &mut Criterion) {
    let live = live();
    let events = new_events(100);
    // A server that has been running a while: some history in every map.
    let mut base = DurableStats::default();
    for (i, e) in new_events(100).iter().enumerate() {
        base.apply(i as u64 + 1, e, &live.counters);
    }
    let gauges = NewEvent::from_value(
        json!({"type": "stats_update", "data": {"totalNodes": 45, "queueDepth": 3, "cacheHitRatio": 0.93}}),
        0,
        &live.rules,
    )
    .unwrap();
    base.apply(101, &gauges, &live.counters);

    let mut g = c.benchmark_group("stats");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("apply_batch/100", |b| {
        b.iter(|| {
            let mut next = base.clone();
            for (i, e) in events.iter().enumerate() {
                next.apply(1000 + i as u64, black_box(e), &live.counters);
            }
            next
        })
    });
    let shared = Stats::new(base.clone());
    g.throughput(Throughput::Elements(1));
    g.bench_function("snapshot+stats_update_message", |b| {
        b.iter(|| {
            sidewire::ws::message(
                sidewire::metrics::WsMessageType::StatsUpdate,
                Value::Object(shared.snapshot(black_box(&live.counters))),
            )
        })
    });
    g.finish();
}

/// (d) SQLite group commit: one transaction per batch (events + stats row),
/// WAL, `synchronous=NORMAL` (the default), into a temp database.
fn sqlite_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let plugin = SqlitePlugin::open(&dir.path().join("bench.db"), SqliteSync::Normal).unwrap();
    let live = live();
    let template = new_events(1000);
    let mut stats = DurableStats::default();
    let mut seq = 0u64;

    let mut g = c.benchmark_group("sqlite_commit");
    g.sample_size(10);
    for n in [1usize, 100, 1000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Fresh seqs and ids every batch (both are unique keys);
                    // building the batch is the pipeline's cost, not the store's.
                    let events: Vec<Arc<Event>> = template[..n]
                        .iter()
                        .map(|e| {
                            seq += 1;
                            let mut e = e.clone();
                            e.id = Some(format!("bench-{seq}"));
                            stats.apply(seq, &e, &live.counters);
                            Arc::new(Event::from_new(seq, &e))
                        })
                        .collect();
                    let batch = Batch { events, stats: Arc::new(stats.clone()) };
                    let start = Instant::now();
                    rt.block_on(plugin.persist(&batch)).unwrap();
                    total += start.elapsed();
                }
                total
            })
        });
    }
    g.finish();
    rt.block_on(plugin.close()).unwrap();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = ingest_parse, encode, stats, sqlite_commit
}
criterion_main!(benches);
