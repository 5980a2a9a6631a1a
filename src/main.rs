//! The `sidewire` binary: parses the CLI, sets up logging, loads the config
//! and runs the library's server.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sidewire::config::{Config, ConfigSource, LiveConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: ingest allocates many small, short-lived
/// objects (parsed JSON, ids, encoded events) on several threads, and glibc's
/// arena consolidation was a third of the HTTP workers' CPU in profiles
/// (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sidewire", version, about = "Observability sidecar: ingest hook, live dashboard, Prometheus metrics")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (default: config/sidewire.toml, else built-in defaults).
    #[arg(long, env = "SIDEWIRE_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Serve,
    /// Validate a config file: exit 0, or print every error and exit 1.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
    },
    /// Send one event to a running sidecar and print its seq.
    Emit {
        /// Base URL of the sidecar, e.g. http://127.0.0.1:8790.
        #[arg(long, default_value = "http://127.0.0.1:8790")]
        url: String,
        /// Event type, e.g. ingestion_complete.
        #[arg(long = "type")]
        kind: String,
        /// Event data, a JSON object.
        #[arg(long)]
        data: Option<String>,
        /// Idempotency key.
        #[arg(long)]
        id: Option<String>,
        /// Which backend instance sent it.
        #[arg(long)]
        source: Option<String>,
        /// Ingest token (also SIDEWIRE_TOKEN).
        #[arg(long, env = "SIDEWIRE_TOKEN")]
        token: Option<String>,
    },
    /// Write the stored events as NDJSON (one event with its seq per line, oldest first).
    Export {
        /// Only events with seq above this.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        /// Only events with a timestamp at or after this: an RFC 3339 time or a duration back (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only events of this type (repeatable; any of them).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Load events written by `export` into the configured store, keeping seqs, ids and timestamps.
    Import {
        /// Read here instead of stdin.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// Import even though something answers on the config's server.listen
        /// (e.g. the old sidecar, on another store, during a move).
        #[arg(long)]
        force: bool,
    },
    /// Exit 0 when a sidecar answers its health check (for container healthchecks).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8790/healthz")]
        url: String,
    },
    /// Send realistic synthetic backend activity (to try the dashboard and Grafana).
    Demo {
        /// Base URL of the sidecar.
        #[arg(long, default_value = "http://127.0.0.1:8790")]
        url: String,
        /// Events per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        duration: Option<u64>,
        /// Ingest token (also SIDEWIRE_TOKEN).
        #[arg(long, env = "SIDEWIRE_TOKEN")]
        token: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::CheckConfig { path } => return check_config(&path),
        Command::Emit { url, kind, data, id, source, token } => emit(&url, &kind, data, id, source, token),
        Command::Export { after_seq, since, types, output } => export(cli.config, after_seq, since, types, output),
        Command::Import { input, force } => import(cli.config, input, force),
        Command::Health { url } => health(&url),
        Command::Demo { url, rate, duration, token } => demo(url, rate, duration, token),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let env = sidewire::reload::env_overrides();
    let (config, source) = Config::load(path.as_deref())?;
    // Dropped last, after the runtime: flushes the spans still queued.
    let telemetry = sidewire::telemetry::init(&config.telemetry)?;
    match &source {
        ConfigSource::File(p) => tracing::info!(path = %p.display(), "config loaded"),
        ConfigSource::Defaults => tracing::info!(
            "no config file at {}; using built-in defaults (plus SIDEWIRE__* overrides); hot reload is off",
            sidewire::config::DEFAULT_PATH
        ),
    }
    // Before anything opens files: every connection is a descriptor, and the
    // soft limit is often a small fraction of what the system allows.
    match sidewire::conn::limit::raise_nofile_limit() {
        Ok(l) => match l.raised_from {
            Some(from) => tracing::info!(from, to = l.soft, "raised the open-file limit to its hard limit"),
            None => tracing::debug!(soft = l.soft, hard = l.hard, "open-file limit"),
        },
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let addr = config.listen_addr().map_err(anyhow::Error::msg)?;
    let log = telemetry.log_handle();
    let result = runtime()?.block_on(async move {
        let listener = sidewire::server::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let (config_tx, config_rx) = tokio::sync::watch::channel(LiveConfig::new(config.clone()));
        let port = listener.local_addr()?.port();
        let running = sidewire::ServerBuilder::new(config).config_channel(config_rx).port(port).start().await?;
        let _reloader = match source {
            ConfigSource::File(p) => Some(
                sidewire::reload::Reloader::new(p, env, config_tx, running.app.metrics.clone()).log_handle(log).spawn(),
            ),
            ConfigSource::Defaults => {
                ignore_sighup();
                None
            }
        };
        running.serve(listener, shutdown_signal()).await;
        anyhow::Ok(())
    });
    drop(telemetry);
    result
}

/// Without a config file there is nothing to reload, but a SIGHUP (sent by
/// habit, or by a tool that reloads every sidecar) must not kill the process,
/// which is the default action.
fn ignore_sighup() {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::warn!("SIGHUP ignored: running on built-in defaults, there is no config file to reload");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP"),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(Some(path)) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(sidewire::config::ConfigError::Invalid { issues, .. }) => {
            for i in &issues {
                eprintln!("{}: {i}", path.display());
            }
            eprintln!("{}: {} error(s)", path.display(), issues.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn emit(
    url: &str,
    kind: &str,
    data: Option<String>,
    id: Option<String>,
    source: Option<String>,
    token: Option<String>,
) -> anyhow::Result<()> {
    let mut event = serde_json::json!({ "type": kind });
    if let Some(d) = data {
        let v: serde_json::Value = serde_json::from_str(&d).context("--data is not valid JSON")?;
        event["data"] = v;
    }
    if let Some(id) = id {
        event["id"] = id.into();
    }
    if let Some(s) = source {
        event["source"] = s.into();
    }
    let endpoint = format!("{}/api/v1/ingest", url.trim_end_matches('/'));
    runtime()?.block_on(async move {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
        let mut req = client.post(&endpoint).header("content-type", "application/json").body(event.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.with_context(|| format!("cannot reach {endpoint}"))?;
        let status = res.status();
        let body: serde_json::Value =
            serde_json::from_slice(&res.bytes().await.unwrap_or_default()).unwrap_or_default();
        if status.as_u16() != 202 {
            let code = body["error"]["code"].as_str().unwrap_or("?");
            let msg = body["error"]["message"].as_str().unwrap_or("");
            bail!("the sidecar answered {status}: {code}: {msg}");
        }
        let seq = &body["seqs"][0];
        if body["duplicates"].as_u64() == Some(1) {
            println!("{seq} (duplicate: already accepted)");
        } else {
            println!("{seq}");
        }
        Ok(())
    })
}

/// Logs of the store (warnings only) on stderr, for export and import.
fn quiet_logs() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("warn").init();
}

/// Loads the config and opens its store, refusing to create one that is not there.
async fn open_store(
    path: Option<PathBuf>,
    create: bool,
) -> anyhow::Result<(Config, std::sync::Arc<dyn sidewire::persist::PersistCallback>, sidewire::persist::Recovered)> {
    let (config, source) = Config::load(path.as_deref())?;
    if let ConfigSource::Defaults = source {
        eprintln!("no config file at {}; using the built-in defaults", sidewire::config::DEFAULT_PATH);
    }
    let p = &config.persist;
    let file = match p.plugin {
        sidewire::config::PluginKind::Sqlite => Some(&p.sqlite_path),
        sidewire::config::PluginKind::Jsonl => Some(&p.jsonl_path),
        _ => None,
    };
    if let Some(file) = file.filter(|f| !create && !f.exists()) {
        bail!("there is no {} store at {}", p.plugin.as_str(), file.display());
    }
    let plugin = sidewire::persist::from_config(&config)?;
    let recovered = plugin.recover().await.context("cannot open the store")?;
    Ok((config, plugin, recovered))
}

fn export(
    config: Option<PathBuf>,
    after_seq: u64,
    since: Option<String>,
    types: Vec<String>,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    quiet_logs();
    let since = since
        .map(|s| sidewire::transfer::parse_since(&s, chrono::Utc::now()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some(t) = types.iter().find(|t| !sidewire::event::is_event_type(t)) {
        bail!("--type {t:?} is not a valid event type");
    }
    let filter = sidewire::transfer::ExportFilter { after_seq, since, types };
    runtime()?.block_on(async move {
        let (_, plugin, recovered) = open_store(config, false).await?;
        let mut progress = sidewire::transfer::Progress::new("exported");
        let summary = match output {
            Some(path) => {
                let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
                let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
                let s =
                    sidewire::transfer::export(&*plugin, &filter, recovered.last_seq, &mut out, &mut progress).await?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                s
            }
            None => {
                let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                sidewire::transfer::export(&*plugin, &filter, recovered.last_seq, &mut out, &mut progress).await?
            }
        };
        plugin.close().await?;
        eprintln!("exported {} events (last seq {})", summary.events, summary.last_seq);
        Ok(())
    })
}

fn import(config: Option<PathBuf>, input: Option<PathBuf>, force: bool) -> anyhow::Result<()> {
    quiet_logs();
    runtime()?.block_on(async move {
        let (config, plugin, recovered) = open_store(config, true).await?;
        // A running sidecar on this store would overwrite the imported stats
        // with its own at its next commit.
        let listening = |addr: std::net::SocketAddr| {
            addr.port() != 0
                && std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_ok()
        };
        if let Some(addr) = config.listen_addr().ok().filter(|a| !force && listening(*a)) {
            bail!(
                "something listens on {addr} (server.listen): stop the sidecar that uses this store before \
                 importing (its next commit would overwrite the imported stats), or pass --force when that \
                 is another sidecar on another store"
            );
        }
        let rules = config.stats.counter_rules();
        let stats = recovered.stats.clone().unwrap_or_default();
        let mut progress = sidewire::transfer::Progress::new("imported");
        let result = match input {
            Some(path) => {
                let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
                let mut r = std::io::BufReader::with_capacity(1 << 20, file);
                sidewire::transfer::import(&*plugin, &rules, stats, &mut r, &mut progress).await
            }
            None => {
                let mut r = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
                sidewire::transfer::import(&*plugin, &rules, stats, &mut r, &mut progress).await
            }
        };
        plugin.close().await?;
        let summary = result?;
        eprintln!(
            "imported {} events (last seq {}); the store now counts {} events in all",
            summary.events, summary.last_seq, summary.stats.events_total
        );
        Ok(())
    })
}

fn health(url: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?;
        let res = client.get(url).send().await.with_context(|| format!("cannot reach {url}"))?;
        if !res.status().is_success() {
            bail!("{url} answered {}", res.status());
        }
        Ok(())
    })
}

fn demo(url: String, rate: f64, duration: Option<u64>, token: Option<String>) -> anyhow::Result<()> {
    if !(rate > 0.0 && rate <= 100_000.0) {
        bail!("--rate must be between 0 and 100000 events per second");
    }
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("info").init();
    let opts = sidewire::demo::DemoOptions { url, rate, duration: duration.map(std::time::Duration::from_secs), token };
    eprintln!("sending demo traffic to {} at {rate} events/s (Ctrl-C to stop)", opts.url);
    runtime()?.block_on(async move {
        tokio::select! {
            r = sidewire::demo::run(opts) => {
                let n = r?;
                eprintln!("done: {n} events accepted");
            }
            _ = tokio::signal::ctrl_c() => eprintln!("stopped"),
        }
        Ok(())
    })
}
