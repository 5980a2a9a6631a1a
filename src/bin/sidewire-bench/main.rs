//! `sidewire-bench`: the project's load generator. Loopback targets only;
//! every loop is bounded in count and time. Prints a human summary and one
//! JSON line per run (prefixed `RESULT `), for scripts.
//!
//! ```sh
//! sidewire-bench ingest --concurrency 32 --batch 1 --duration 10
//! sidewire-bench fanout --clients 1000 --rate 100 --duration 10
//! sidewire-bench conns --clients 10000 --server-pid $(pgrep -f 'sidewire serve')
//! sidewire-bench e2e --count 2000
//! sidewire-bench soak --minutes 10 --server-pid $(pgrep -f 'sidewire serve')
//! ```
//! Fan-out and conns open many connections from 127.0.0.1: run the server
//! with raised per-IP limits, e.g.
//! `SIDEWIRE__WS__MAX_CONNECTIONS_PER_IP=100000 SIDEWIRE__WS__CONNECT_RATE_PER_IP_PER_MIN=1000000`.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

mod conns;
mod e2e;
mod fanout;
mod ingest;
mod soak;

use conns::conns;
use e2e::e2e;
use fanout::fanout;
use ingest::{ingest, IngestShape};

/// The tool shares the CPU with the server it measures: the cheaper its own
/// allocations, the more the figures say about the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hard caps, whatever the flags say.
const MAX_DURATION_SECS: u64 = 600;
const MAX_CLIENTS: usize = 19_000;
const MAX_SOAK_SECS: f64 = 3600.0;

#[derive(Parser)]
#[command(name = "sidewire-bench", version, about = "Load generator for sidewire (loopback only)")]
struct Cli {
    /// Base URL of the server (must be a loopback address). Repeat it (or
    /// separate with commas) for several replicas: ingest producers, fan-out
    /// clients and soak producers and dashboards are spread over them
    /// round-robin; other commands use the first.
    #[arg(long, default_value = "http://127.0.0.1:8790", global = true, value_delimiter = ',', action = clap::ArgAction::Append)]
    url: Vec<String>,
    /// Ingest token, if the server requires one.
    #[arg(long, env = "SIDEWIRE_TOKEN", global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Ids {
    Unique,
    None,
    Repeat,
}

impl Ids {
    fn name(self) -> &'static str {
        match self {
            Ids::Unique => "unique",
            Ids::None => "none",
            Ids::Repeat => "repeat",
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Ingest throughput and latency.
    Ingest {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Events per request.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Bytes of filler in each event's data (on top of the realistic fields).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Event ids (the idempotency key): `unique` per event, as a real
        /// client sends them; `none`; or `repeat`, every request resending
        /// the same batch (all duplicates after the first: a retry storm).
        #[arg(long, value_enum, default_value_t = Ids::Unique)]
        ids: Ids,
    },
    /// N WebSocket clients, R events/s: delivery rate, latency, loss, order.
    Fanout {
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Events per second, in total.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Events per ingest request (sent every per_request/rate seconds);
        /// 0: whatever is due every 10 ms.
        #[arg(long, default_value_t = 0)]
        per_request: u64,
        /// PID of the server (one process), to report the CPU it spent per
        /// delivered message, read from /proc while events flow.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// N idle connections: server RSS per connection and time to open them.
    Conns {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// PID of the server, to read its RSS from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 2)]
        hold: u64,
    },
    /// A bounded soak: steady ingest, dashboards with churn and resume,
    /// reloads, a poller; per-period RSS, fds, p99 and losses; fails on loss
    /// or growth.
    Soak {
        /// Minutes to run (fractions allowed, e.g. 0.5).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seconds per reported period (a table row).
        #[arg(long, default_value_t = 60)]
        period_secs: u64,
        /// Events per second (single events with unique ids).
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Mean seconds a dashboard stays connected before it drops and resumes.
        #[arg(long, default_value_t = 50)]
        lifetime_secs: u64,
        /// Seconds between SIGHUPs (config reloads) to --server-pid.
        #[arg(long, default_value_t = 5)]
        reload_every_secs: u64,
        /// PID of the server: RSS and open fds from /proc, SIGHUP for reloads.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Fail when RSS grows more than this after the first period.
        #[arg(long, default_value_t = 64)]
        max_rss_growth_mib: u64,
        /// Fail when open fds grow more than this after the first period.
        #[arg(long, default_value_t = 100)]
        max_fd_growth: u64,
        /// Producers (each one sequential client), spread over the --url
        /// replicas; a producer whose replica fails retries the same event
        /// (same id) on the next one.
        #[arg(long, default_value_t = 1)]
        producers: usize,
        /// Cluster mode: the command that starts replica {i} (1-based, in
        /// --url order), run with `sh -c 'exec …'`; `{i}` is replaced. The
        /// soak starts every replica, kills one with SIGKILL and restarts it
        /// every --kill-every-secs, and stops them at the end.
        #[arg(long)]
        replica_cmd: Option<String>,
        /// Where the replicas' stdout/stderr go (replica-{i}.log).
        #[arg(long, default_value = ".")]
        replica_log_dir: std::path::PathBuf,
        /// Seconds between kill -9 + restart of a replica (0: never). Round
        /// robin over replicas 2..N (replica 1 lives the whole run, so its RSS
        /// and fds cover it all); replica 1 itself when there is only one.
        #[arg(long, default_value_t = 60)]
        kill_every_secs: u64,
        /// A TCP proxy `LISTEN=UPSTREAM` (e.g. 127.0.0.1:16379=127.0.0.1:6379)
        /// the replicas reach Redis through; the soak cuts it now and then.
        #[arg(long)]
        redis_proxy: Option<String>,
        /// Seconds between Redis cuts (0: never).
        #[arg(long, default_value_t = 45)]
        cut_every_secs: u64,
        /// How long a cut lasts, seconds.
        #[arg(long, default_value_t = 5)]
        cut_secs: u64,
    },
    /// Single events on an idle server: ingest→delivery latency.
    E2e {
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Pause between events, in milliseconds.
        #[arg(long, default_value_t = 2)]
        gap_ms: u64,
        /// The dashboard's server, when it is another replica than the one
        /// ingesting (the first --url); default: the same.
        #[arg(long)]
        dashboard_url: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let addrs = cli.url.iter().map(|u| loopback_addr(u)).collect::<anyhow::Result<Vec<_>>>()?;
    let addr = *addrs.first().context("no --url")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Cmd::Ingest { concurrency, batch, duration, payload, ids } => {
                let shape = IngestShape { batch: batch.clamp(1, 100_000), payload, ids };
                ingest(&addrs, cli.token, concurrency.clamp(1, 4096), shape, capped(duration)).await
            }
            Cmd::Fanout { clients, rate, duration, per_request, server_pid } => {
                let per_request = per_request.min(10_000);
                let load = fanout::Load {
                    clients: clients.min(MAX_CLIENTS),
                    rate: rate.max(1),
                    duration: capped(duration),
                    per_request,
                };
                fanout(&addrs, cli.token, load, server_pid).await
            }
            Cmd::Conns { clients, server_pid, hold } => {
                conns(addr, clients.min(MAX_CLIENTS), server_pid, capped(hold)).await
            }
            Cmd::E2e { count, gap_ms, dashboard_url } => {
                let dashboard = match dashboard_url {
                    Some(u) => loopback_addr(&u)?,
                    None => addr,
                };
                e2e(addr, dashboard, cli.token, count.min(1_000_000), gap_ms).await
            }
            Cmd::Soak {
                minutes,
                period_secs,
                rate,
                clients,
                lifetime_secs,
                reload_every_secs,
                server_pid,
                max_rss_growth_mib,
                max_fd_growth,
                producers,
                replica_cmd,
                replica_log_dir,
                kill_every_secs,
                redis_proxy,
                cut_every_secs,
                cut_secs,
            } => {
                let redis_proxy = match redis_proxy {
                    Some(p) => {
                        let (l, u) = p.split_once('=').context("--redis-proxy is LISTEN=UPSTREAM")?;
                        let (l, u): (SocketAddr, SocketAddr) = (l.parse()?, u.parse()?);
                        if !l.ip().is_loopback() || !u.ip().is_loopback() {
                            bail!("--redis-proxy: loopback addresses only");
                        }
                        Some((l, u))
                    }
                    None => None,
                };
                let options = soak::SoakOptions {
                    duration: Duration::from_secs_f64((minutes.max(0.0) * 60.0).min(MAX_SOAK_SECS))
                        .max(Duration::from_secs(1)),
                    period: Duration::from_secs(period_secs.max(1)),
                    rate: rate.clamp(1, 100_000),
                    clients: clients.min(MAX_CLIENTS),
                    lifetime: Duration::from_secs(lifetime_secs.max(1)),
                    reload_every: Duration::from_secs(reload_every_secs.max(1)),
                    server_pid,
                    max_rss_growth_mib,
                    max_fd_growth,
                    producers: producers.clamp(1, 64),
                    replica_cmd,
                    replica_log_dir,
                    kill_every: (kill_every_secs > 0).then(|| Duration::from_secs(kill_every_secs)),
                    redis_proxy,
                    cut_every: (cut_every_secs > 0).then(|| Duration::from_secs(cut_every_secs)),
                    cut_for: Duration::from_secs(cut_secs.max(1)),
                };
                soak::soak(addrs, cli.token, options).await
            }
        }
    })
}

fn capped(secs: u64) -> Duration {
    Duration::from_secs(secs.clamp(1, MAX_DURATION_SECS))
}

/// The server address; refuses anything but loopback.
fn loopback_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").context("--url must start with http://")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr: SocketAddr =
        hostport.parse().with_context(|| format!("--url host must be an IP:port, got {hostport}"))?;
    if !addr.ip().is_loopback() {
        bail!("sidewire-bench only targets loopback addresses (127.0.0.0/8, ::1), not {}", addr.ip());
    }
    Ok(addr)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A dashboard WebSocket on a plain TCP connection (no name resolution, no
/// Nagle), so the tool measures the server and not its own connect path.
async fn ws_connect(addr: SocketAddr) -> anyhow::Result<Ws> {
    ws_connect_path(addr, "/api/v1/ws/dashboard").await
}

/// [`ws_connect`] to a path with a query (e.g. `?afterSeq=`).
async fn ws_connect_path(addr: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}{path}");
    // tungstenite zero-fills its whole read buffer on every read: the 128 KiB
    // default made memset 60% of this tool's CPU in fan-out runs.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)).await?;
    Ok(ws)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Latency summary in milliseconds.
fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| (us as f64) / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn report(kind: &str, human: &[(&str, String)], result: serde_json::Value) {
    println!("== sidewire-bench {kind}");
    for (k, v) in human {
        println!("  {k:<24} {v}");
    }
    let mut line = result;
    line["bench"] = kind.into();
    line["cores"] = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).into();
    println!("RESULT {line}");
}

fn lat_line(h: &Histogram<u64>) -> String {
    let ms = |q: f64| (h.value_at_quantile(q) as f64) / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        (h.max() as f64) / 1000.0
    )
}

/// A keep-alive HTTP/1.1 connection.
async fn http_conn(addr: SocketAddr) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn ingest_request(addr: SocketAddr, token: &Option<String>, body: Bytes) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post("/api/v1/ingest")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Full::new(body)).expect("valid request")
}

/// Microseconds since the shared monotonic base.
fn now_us(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

/// The fields of a server message the fan-out and soak dashboards read.
#[derive(serde::Deserialize)]
struct Stamped<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
    data: Option<Stamp>,
    #[serde(default, borrow)]
    id: Option<&'a str>,
}

#[derive(serde::Deserialize)]
struct Stamp {
    t: Option<u64>,
}

/// CPU time (user + system) the process `pid` ("self": this one) has used
/// so far, in seconds, from /proc.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold
    // spaces: `utime` and `stime` (fields 14 and 15) are the 12th and 13th.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system setting.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
