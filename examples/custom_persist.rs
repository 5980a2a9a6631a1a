//! Wiring your own persist plugin into sidewire through the library API.
//!
//! This plugin appends each batch to a CSV file (`seq,type,timestamp`) and
//! implements the core [`PersistCallback`] trait only: the activity API and
//! WebSocket resume are then served from sidewire's in-memory ring of recent
//! events, and dedupe uses the window of the last 100,000 ids. Querying,
//! whole-store dedupe, retention and export/import are optional traits a
//! plugin may add later (`sidewire::persist::{Query, Dedupe, Retain,
//! Transfer}`), each reached through an `as_*` method of the core trait.
//!
//! ```sh
//! cargo run --example custom_persist -- 127.0.0.1:8790 /tmp/events.csv
//! curl -s -XPOST localhost:8790/api/v1/ingest -H 'content-type: application/json' \
//!      -d '{"type":"ingestion_complete","data":{"file":"a.pdf"}}'
//! ```
//!
//! `cargo test --example custom_persist` runs it end to end (its test below).

use async_trait::async_trait;
use sidewire::event::format_ts;
use sidewire::persist::{Batch, PersistCallback, PersistError, Recovered};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const NAME: &str = "csv";

/// Appends `seq,type,timestamp` lines, synced before a batch counts as stored.
struct CsvPlugin {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl CsvPlugin {
    fn open(path: &Path) -> std::io::Result<CsvPlugin> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(CsvPlugin { path: path.to_path_buf(), file: Mutex::new(file) })
    }
}

fn unavailable(e: impl std::fmt::Display) -> PersistError {
    PersistError::unavailable(NAME, e)
}

#[async_trait]
impl PersistCallback for CsvPlugin {
    fn name(&self) -> &'static str {
        // Used as the `plugin` label of the persist metrics.
        NAME
    }

    /// Seqs continue above the last one in the file, so none is handed out
    /// twice across restarts. (The stats start from zero: a plugin that
    /// keeps them would store `batch.stats` and hand them back here.)
    async fn recover(&self) -> Result<Recovered, PersistError> {
        let text = std::fs::read_to_string(&self.path).map_err(unavailable)?;
        let last_seq = text.lines().filter_map(|l| l.split(',').next()?.parse::<u64>().ok()).max().unwrap_or(0);
        Ok(Recovered { last_seq, ..Default::default() })
    }

    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        let mut lines = String::new();
        for e in &batch.events {
            lines.push_str(&format!("{},{},{}\n", e.seq, e.kind, format_ts(&e.timestamp)));
        }
        // A short synchronous section; a plugin doing slow I/O would use
        // tokio::task::spawn_blocking or an async client instead.
        let mut f = self.file.lock().map_err(unavailable)?;
        f.write_all(lines.as_bytes()).map_err(unavailable)?;
        f.sync_data().map_err(unavailable)
    }

    /// Drives `/readyz`: the file must still be there.
    async fn health(&self) -> Result<(), PersistError> {
        std::fs::metadata(&self.path).map(drop).map_err(|e| unavailable(format!("{}: {e}", self.path.display())))
    }

    async fn close(&self) -> Result<(), PersistError> {
        self.file.lock().map_err(unavailable)?.sync_all().map_err(unavailable)
    }
}

/// Serves sidewire with the CSV plugin on `listener` until `shutdown`.
async fn serve(
    listener: tokio::net::TcpListener,
    path: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let plugin = Arc::new(CsvPlugin::open(path)?);
    let mut config = sidewire::config::Config::default();
    config.server.listen = listener.local_addr()?.to_string();
    sidewire::ServerBuilder::new(config).persist(plugin).run(listener, shutdown).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8790".into());
    let path = args.next().unwrap_or_else(|| "events.csv".into());
    tracing_subscriber::fmt().with_env_filter("info").init();

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("sidewire with a CSV plugin on http://{addr}, writing {path}");
    serve(listener, Path::new(&path), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Starts the example's server on a free port; stops it when the sender drops.
    async fn start(path: &Path) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let path = path.to_path_buf();
        let server = tokio::spawn(async move {
            serve(listener, &path, async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
        });
        (base, stop, server)
    }

    async fn ingest(c: &reqwest::Client, base: &str, body: Value) -> Value {
        let r = c
            .post(format!("{base}/api/v1/ingest"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn events_reach_the_file_the_activity_api_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.csv");
        let c = reqwest::Client::new();

        let (base, stop, server) = start(&path).await;
        let r = ingest(&c, &base, json!([{"type": "a", "id": "x-1"}, {"type": "b"}])).await;
        assert_eq!(r["seqs"], json!([1, 2]));
        // Dedupe from the pipeline's window: the plugin never sees it.
        let r = ingest(&c, &base, json!({"type": "a", "id": "x-1"})).await;
        assert_eq!((r["duplicates"].as_u64(), &r["seqs"]), (Some(1), &json!([1])));
        // Served from the in-memory ring (the plugin answers no queries).
        let page = c.get(format!("{base}/api/v1/activity/recent?limit=10")).send().await.unwrap();
        let page: Value = serde_json::from_slice(&page.bytes().await.unwrap()).unwrap();
        let seqs: Vec<u64> = page["items"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [2, 1]);
        let ready = c.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        drop(stop);
        server.await.unwrap();

        let lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("1,a,") && lines[1].starts_with("2,b,"), "{lines:?}");

        // `recover` read the last seq back: seqs continue above it.
        let (base, stop, server) = start(&path).await;
        let r = ingest(&c, &base, json!({"type": "c"})).await;
        assert_eq!(r["seqs"], json!([3]));
        drop(stop);
        server.await.unwrap();
    }
}
