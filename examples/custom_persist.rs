//! Wiring your own persist plugin into sidewire through the library API.
//!
//! This plugin appends each batch to a CSV file (seq, type, timestamp) and
//! keeps the events in memory so it can answer activity queries.
//!
//! ```sh
//! cargo run --example custom_persist -- 127.0.0.1:8790 /tmp/events.csv
//! curl -s -XPOST localhost:8790/api/v1/ingest -H 'content-type: application/json' \
//!      -d '{"type":"ingestion_complete","data":{"file":"a.pdf"}}'
//! ```

use async_trait::async_trait;
use sidewire::event::{format_ts, Event};
use sidewire::persist::{memory::MemoryPlugin, Batch, EventQuery, PersistCallback, PersistError};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Appends `seq,type,timestamp` lines; queries are served from memory.
struct CsvPlugin {
    file: Mutex<std::fs::File>,
    recent: MemoryPlugin,
}

#[async_trait]
impl PersistCallback for CsvPlugin {
    fn name(&self) -> &'static str {
        // Used as the `plugin` label of the persist metrics.
        "csv"
    }

    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        let mut lines = String::new();
        for e in &batch.events {
            lines.push_str(&format!("{},{},{}\n", e.seq, e.kind, format_ts(&e.timestamp)));
        }
        {
            // A short synchronous section; a plugin doing slow I/O would use
            // tokio::task::spawn_blocking or an async client instead.
            let mut f = self.file.lock().map_err(|e| PersistError::unavailable("csv", e))?;
            f.write_all(lines.as_bytes()).map_err(|e| PersistError::unavailable("csv", e))?;
            f.sync_data().map_err(|e| PersistError::unavailable("csv", e))?;
        }
        self.recent.persist(batch).await
    }

    fn can_query(&self) -> bool {
        true
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<Arc<Event>>, PersistError> {
        self.recent.query(q).await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8790".into());
    let path = args.next().unwrap_or_else(|| "events.csv".into());
    tracing_subscriber::fmt().with_env_filter("info").init();

    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let plugin = Arc::new(CsvPlugin { file: Mutex::new(file), recent: MemoryPlugin::new(10_000) });

    let mut config = sidewire::config::Config::default();
    config.server.listen = addr.clone();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("sidewire with a CSV plugin on http://{addr}, writing {path}");
    sidewire::ServerBuilder::new(config)
        .persist(plugin)
        .run(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
