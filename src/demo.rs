//! `sidewire demo`: realistic synthetic backend activity, so anyone can try
//! the dashboard and Grafana without a backend. Sends file ingestions, chat
//! queries with latencies, occasional errors and periodic gauge reports.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What to send and where.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Base URL of the sidecar.
    pub url: String,
    /// Events per second (gauge reports come on top, every 2 s).
    pub rate: f64,
    /// Stop after this long; `None`: until interrupted.
    pub duration: Option<Duration>,
    pub token: Option<String>,
}

const FILES: [&str; 8] = [
    "quarterly-report.pdf",
    "onboarding.docx",
    "pricing-2026.xlsx",
    "architecture.md",
    "contract-acme.pdf",
    "meeting-notes.txt",
    "roadmap.pptx",
    "faq.html",
];
const QUERIES: [&str; 6] = [
    "what changed in the pricing for 2026?",
    "summarize the acme contract",
    "who owns the ingestion service?",
    "list open risks from the roadmap",
    "how do I reset my password?",
    "compare Q3 and Q4 revenue",
];
const ERRORS: [(&str, &str); 3] = [
    ("embedding", "embedding service timed out after 30s"),
    ("parser", "unsupported file format: .heic"),
    ("vector-store", "connection reset by peer"),
];

/// Totals the demo backend reports as gauges.
#[derive(Debug, Default)]
struct Backend {
    total_nodes: u64,
    total_files: u64,
    seq: u64,
}

impl Backend {
    fn next_event(&mut self, rng: &mut impl Rng) -> Value {
        self.seq += 1;
        let id = format!("demo-{}-{}", std::process::id(), self.seq);
        let roll: f64 = rng.random();
        if roll < 0.55 {
            let nodes = rng.random_range(3..60);
            self.total_nodes += nodes;
            self.total_files += 1;
            json!({"type": "ingestion_complete", "id": id, "source": "demo-backend-1", "data": {
                "file": FILES[rng.random_range(0..FILES.len())],
                "sizeBytes": rng.random_range(2_000..4_000_000),
                "nodesCreated": nodes,
                "durationMs": rng.random_range(120..9_000),
            }})
        } else if roll < 0.97 {
            json!({"type": "query_complete", "id": id, "source": "demo-backend-1", "data": {
                "query": QUERIES[rng.random_range(0..QUERIES.len())],
                "latencyMs": (rng.random::<f64>().powi(3) * 4000.0 + 150.0).round(),
                "sources": rng.random_range(0..8),
                "tokens": rng.random_range(80..1600),
            }})
        } else {
            let (component, message) = ERRORS[rng.random_range(0..ERRORS.len())];
            json!({"type": "error", "id": id, "source": "demo-backend-1",
                   "data": {"component": component, "message": message}})
        }
    }

    fn gauges(&self, rng: &mut impl Rng) -> Value {
        json!({"type": "stats_update", "source": "demo-backend-1", "data": {
            "totalNodes": self.total_nodes,
            "totalFiles": self.total_files,
            "activeUsers": rng.random_range(3..40),
            "queueDepth": rng.random_range(0..25),
        }})
    }
}

/// Runs until the duration passes or the process is interrupted. Returns
/// the number of events accepted.
pub async fn run(opts: DemoOptions) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let endpoint = format!("{}/api/v1/ingest", opts.url.trim_end_matches('/'));
    let mut backend = Backend::default();
    // A `Send` generator, so the demo future can be spawned.
    let mut rng = StdRng::from_os_rng();
    let started = Instant::now();
    let tick = Duration::from_millis(100);
    let mut interval = tokio::time::interval(tick);
    let mut owed = 0.0;
    let mut accepted = 0u64;
    let mut last_gauges = Instant::now() - Duration::from_secs(10);
    let mut last_report = Instant::now();
    loop {
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(accepted);
        }
        interval.tick().await;
        owed += opts.rate * tick.as_secs_f64();
        let n = owed.floor() as usize;
        owed -= n as f64;
        let mut batch: Vec<Value> = (0..n).map(|_| backend.next_event(&mut rng)).collect();
        if last_gauges.elapsed() >= Duration::from_secs(2) {
            batch.push(backend.gauges(&mut rng));
            last_gauges = Instant::now();
        }
        if batch.is_empty() {
            continue;
        }
        let mut req =
            client.post(&endpoint).header("content-type", "application/json").body(Value::Array(batch).to_string());
        if let Some(t) = &opts.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(res) if res.status().as_u16() == 202 => {
                let body: Value = serde_json::from_slice(&res.bytes().await.unwrap_or_default()).unwrap_or_default();
                accepted += body["accepted"].as_u64().unwrap_or(0);
            }
            Ok(res) => {
                let status = res.status();
                let body = res.text().await.unwrap_or_default();
                tracing::warn!(%status, body = %body.chars().take(200).collect::<String>(), "the sidecar refused a demo batch");
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach the sidecar; retrying"),
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            tracing::info!(accepted, "demo traffic");
            last_report = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{NewEvent, Rules};

    #[test]
    fn every_demo_event_is_valid() {
        let mut b = Backend::default();
        let mut rng = rand::rng();
        for i in 0..500 {
            let e = b.next_event(&mut rng);
            NewEvent::from_value(e, i, &Rules::default()).unwrap();
        }
        let g = b.gauges(&mut rng);
        let rules = crate::config::LiveConfig::new(crate::config::Config::default()).rules.clone();
        NewEvent::from_value(g, 0, &rules).unwrap();
    }
}
