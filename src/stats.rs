//! Stats (contract section 3): the durable part (counters, totals, gauges,
//! last seq) that the persist plugin stores with every commit, and the live
//! part (sliding windows, connections, uptime). [`Stats::snapshot`] is the one
//! code path behind both `GET /api/v1/stats` and every `stats_update`.

use crate::event::{format_ts, NewEvent};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Keys the server always sends; no counter or gauge may take them.
pub const BUILTIN_STATS: [&str; 10] = [
    "eventsTotal",
    "eventsPerMinute",
    "eventsByType",
    "activeConnections",
    "messagesPerMinute",
    "uptimeSeconds",
    "lastEventAt",
    "lastSeq",
    "generatedAt",
    "replicas",
];

/// `[[stats.counters]]`: a counter that moves on events of one type.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CounterRule {
    /// Stat name (camelCase by convention), `^[A-Za-z][A-Za-z0-9_]{0,63}$`.
    pub name: String,
    /// Event type that moves it.
    pub on: String,
    /// Dotted path (`data.filesProcessed`) of a number to add; else `default`.
    #[serde(default)]
    pub add: Option<String>,
    /// Added when `add` is unset or does not name a number.
    #[serde(default = "one")]
    pub default: f64,
}

fn one() -> f64 {
    1.0
}

impl CounterRule {
    pub fn defaults() -> Vec<CounterRule> {
        vec![
            CounterRule {
                name: "filesProcessed".into(),
                on: "ingestion_complete".into(),
                add: Some("data.filesProcessed".into()),
                default: 1.0,
            },
            CounterRule { name: "queriesCompleted".into(), on: "query_complete".into(), add: None, default: 1.0 },
            CounterRule { name: "errors".into(), on: "error".into(), add: None, default: 1.0 },
        ]
    }
}

/// What survives a restart. Owned by the pipeline's writer; a copy with a
/// batch applied is handed to the plugin with that batch, so the store holds
/// the stats of exactly the events it holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DurableStats {
    pub last_seq: u64,
    pub last_event_at: Option<DateTime<Utc>>,
    pub events_total: u64,
    pub events_by_type: BTreeMap<String, u64>,
    /// Every counter ever moved, also those no rule names any more.
    pub counters: BTreeMap<String, f64>,
    pub gauges: BTreeMap<String, f64>,
}

impl DurableStats {
    /// Accounts one accepted event.
    pub fn apply(&mut self, seq: u64, event: &NewEvent, rules: &[CounterRule]) {
        self.apply_at(seq, event, rules, crate::event::now_ms());
    }

    /// [`apply`](Self::apply) with the acceptance time given (an import
    /// accounts each event at its own timestamp).
    pub fn apply_at(&mut self, seq: u64, event: &NewEvent, rules: &[CounterRule], at: DateTime<Utc>) {
        self.last_seq = self.last_seq.max(seq);
        self.last_event_at = Some(at);
        self.events_total += 1;
        *self.events_by_type.entry(event.kind.clone()).or_default() += 1;
        for rule in rules.iter().filter(|r| r.on == event.kind) {
            let add = rule.add.as_deref().and_then(|p| number_at(&event.data, p)).unwrap_or(rule.default);
            let counter = self.counters.entry(rule.name.clone()).or_default();
            // Saturate instead of overflowing to infinity: a non-finite value
            // would not survive the JSON round trip through the store.
            *counter = (*counter + add).clamp(f64::MIN, f64::MAX);
        }
        if event.is_gauge_report() {
            for (name, v) in event.gauges() {
                self.gauges.insert(name.to_string(), v);
            }
        }
    }
}

/// The number at a dotted path such as `data.files.count`.
fn number_at(data: &Map<String, Value>, path: &str) -> Option<f64> {
    let mut parts = path.strip_prefix("data.")?.split('.');
    let mut cur = data.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    cur.as_f64()
}

/// A count over the last 60 s, in 100 ms buckets (so it is exact to 0.1 s).
#[derive(Debug)]
pub struct SlidingWindow {
    start: Instant,
    inner: Mutex<VecDeque<(u64, u64)>>,
}

const BUCKET: Duration = Duration::from_millis(100);
const WINDOW_BUCKETS: u64 = 600;

impl Default for SlidingWindow {
    fn default() -> Self {
        Self { start: Instant::now(), inner: Mutex::new(VecDeque::new()) }
    }
}

impl SlidingWindow {
    fn bucket_now(&self) -> u64 {
        (self.start.elapsed().as_millis() / BUCKET.as_millis()) as u64
    }

    pub fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        let b = self.bucket_now();
        let mut q = self.inner.lock();
        match q.back_mut() {
            Some((bucket, count)) if *bucket == b => *count += n,
            _ => q.push_back((b, n)),
        }
        while q.front().is_some_and(|(bucket, _)| bucket + WINDOW_BUCKETS <= b) {
            q.pop_front();
        }
    }

    /// The total of the last 60 s.
    pub fn total(&self) -> u64 {
        let b = self.bucket_now();
        let q = self.inner.lock();
        q.iter().filter(|(bucket, _)| bucket + WINDOW_BUCKETS > b).map(|(_, c)| c).sum()
    }
}

/// Shared stats: written by the pipeline after each commit, read by the REST
/// API and the WebSocket hub.
#[derive(Debug)]
pub struct Stats {
    durable: Mutex<DurableStats>,
    pub events_window: SlidingWindow,
    pub messages_window: SlidingWindow,
    pub active_connections: AtomicU64,
    started: Instant,
    cluster: Mutex<ClusterView>,
}

/// The other live replicas as the last heartbeat saw them: their sums are
/// added to this replica's `activeConnections` and `messagesPerMinute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterView {
    /// Live replicas, this one included (the `replicas` built-in).
    pub replicas: u64,
    pub other_connections: u64,
    pub other_messages_per_minute: u64,
}

impl Default for ClusterView {
    fn default() -> Self {
        Self { replicas: 1, other_connections: 0, other_messages_per_minute: 0 }
    }
}

impl Stats {
    pub fn new(initial: DurableStats) -> Self {
        Self {
            durable: Mutex::new(initial),
            events_window: SlidingWindow::default(),
            messages_window: SlidingWindow::default(),
            active_connections: AtomicU64::new(0),
            started: Instant::now(),
            cluster: Mutex::new(ClusterView::default()),
        }
    }

    /// Replaces the durable part after a commit of `accepted` events. Stats
    /// older than the ones held (a lower `lastSeq`, which several replicas
    /// can hand in out of turn) only count their events.
    pub fn commit(&self, next: DurableStats, accepted: u64) {
        {
            let mut durable = self.durable.lock();
            if next.last_seq >= durable.last_seq {
                *durable = next;
            }
        }
        self.events_window.add(accepted);
    }

    /// What the other live replicas add (see [`ClusterView`]).
    pub fn set_cluster(&self, view: ClusterView) {
        *self.cluster.lock() = view;
    }

    pub fn cluster(&self) -> ClusterView {
        *self.cluster.lock()
    }

    pub fn last_seq(&self) -> u64 {
        self.durable.lock().last_seq
    }

    pub fn durable(&self) -> DurableStats {
        self.durable.lock().clone()
    }

    /// The flat stats object of the contract. `counters` are the rules in force.
    pub fn snapshot(&self, counters: &[CounterRule]) -> Map<String, Value> {
        let d = self.durable.lock().clone();
        let mut m = Map::new();
        // gauges first, so a built-in or counter of the same name (refused at
        // ingest, but possibly persisted under an older config) cannot shadow.
        for (k, v) in &d.gauges {
            m.insert(k.clone(), number(*v));
        }
        for rule in counters {
            m.insert(rule.name.clone(), number(d.counters.get(&rule.name).copied().unwrap_or(0.0)));
        }
        m.insert("eventsTotal".into(), d.events_total.into());
        m.insert("eventsPerMinute".into(), self.events_window.total().into());
        m.insert(
            "eventsByType".into(),
            Value::Object(d.events_by_type.iter().map(|(k, v)| (k.clone(), (*v).into())).collect()),
        );
        let cluster = *self.cluster.lock();
        m.insert(
            "activeConnections".into(),
            (self.active_connections.load(Ordering::Relaxed) + cluster.other_connections).into(),
        );
        m.insert("messagesPerMinute".into(), (self.messages_window.total() + cluster.other_messages_per_minute).into());
        m.insert("replicas".into(), cluster.replicas.into());
        m.insert("uptimeSeconds".into(), self.started.elapsed().as_secs().into());
        m.insert("lastEventAt".into(), d.last_event_at.map(|t| format_ts(&t).into()).unwrap_or(Value::Null));
        m.insert("lastSeq".into(), d.last_seq.into());
        m.insert("generatedAt".into(), format_ts(&crate::event::now_ms()).into());
        m
    }
}

/// Whole numbers as JSON integers, the rest as floats.
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{NewEvent, Rules};
    use serde_json::json;

    fn ev(v: Value) -> NewEvent {
        NewEvent::from_value(v, 0, &Rules::default()).unwrap()
    }

    #[test]
    fn default_counters_follow_the_contract() {
        let rules = CounterRule::defaults();
        let mut d = DurableStats::default();
        d.apply(1, &ev(json!({"type": "ingestion_complete"})), &rules);
        d.apply(2, &ev(json!({"type": "ingestion_complete", "data": {"filesProcessed": 5}})), &rules);
        d.apply(3, &ev(json!({"type": "ingestion_complete", "data": {"filesProcessed": "7"}})), &rules);
        d.apply(4, &ev(json!({"type": "query_complete"})), &rules);
        d.apply(5, &ev(json!({"type": "error"})), &rules);
        d.apply(6, &ev(json!({"type": "stats_update", "data": {"totalNodes": 45, "s": "x"}})), &rules);
        assert_eq!(d.counters["filesProcessed"], 7.0);
        assert_eq!(d.counters["queriesCompleted"], 1.0);
        assert_eq!(d.counters["errors"], 1.0);
        assert_eq!(d.gauges.len(), 1);
        assert_eq!(d.events_total, 6);
        assert_eq!(d.last_seq, 6);

        let s = Stats::new(d);
        let snap = s.snapshot(&rules);
        assert_eq!(snap["filesProcessed"], json!(7));
        assert_eq!(snap["totalNodes"], json!(45));
        assert_eq!(snap["lastSeq"], json!(6));
        for k in BUILTIN_STATS {
            assert!(snap.contains_key(k), "{k}");
        }
    }

    #[test]
    fn huge_counter_values_saturate_and_survive_a_round_trip() {
        let rules = CounterRule::defaults();
        let mut d = DurableStats::default();
        for seq in 1..=3 {
            d.apply(seq, &ev(json!({"type": "ingestion_complete", "data": {"filesProcessed": 1.0e308}})), &rules);
        }
        assert!(d.counters["filesProcessed"].is_finite());
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DurableStats>(&text).unwrap(), d);
    }

    #[test]
    fn nested_add_path() {
        let rules = vec![CounterRule { name: "n".into(), on: "x".into(), add: Some("data.a.b".into()), default: 0.0 }];
        let mut d = DurableStats::default();
        d.apply(1, &ev(json!({"type": "x", "data": {"a": {"b": 2.5}}})), &rules);
        d.apply(2, &ev(json!({"type": "x", "data": {"a": 1}})), &rules);
        assert_eq!(d.counters["n"], 2.5);
    }

    #[test]
    fn sliding_window_counts() {
        let w = SlidingWindow::default();
        w.add(3);
        w.add(4);
        assert_eq!(w.total(), 7);
    }

    #[test]
    fn durable_stats_round_trip_as_json() {
        let mut d = DurableStats::default();
        d.apply(9, &ev(json!({"type": "error"})), &CounterRule::defaults());
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DurableStats>(&text).unwrap(), d);
    }
}
