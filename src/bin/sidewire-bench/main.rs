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

mod soak;

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
            Cmd::Fanout { clients, rate, duration, per_request } => {
                let per_request = per_request.min(10_000);
                fanout(&addrs, cli.token, clients.min(MAX_CLIENTS), rate.max(1), capped(duration), per_request).await
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

/// What each ingest request carries.
#[derive(Clone, Copy)]
struct IngestShape {
    batch: usize,
    payload: usize,
    ids: Ids,
}

impl IngestShape {
    /// One request body: `batch` events shaped like a backend's
    /// `ingestion_complete` reports, with an id unique to (run, task, counter)
    /// unless told otherwise. Built with plain string writes, as a client
    /// serializing its events would, and sent as a JSON array (one object
    /// when `batch` is 1).
    fn body(&self, run: &str, task: usize, counter: &mut u64, filler: &str) -> Bytes {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.batch * (200 + filler.len()));
        if self.batch > 1 {
            out.push('[');
        }
        for i in 0..self.batch {
            if i > 0 {
                out.push(',');
            }
            let n = *counter;
            *counter += 1;
            out.push_str(r#"{"type":"ingestion_complete","#);
            match self.ids {
                Ids::Unique => write!(out, r#""id":"{run}-{task}-{n}","#).unwrap(),
                Ids::Repeat => write!(out, r#""id":"{run}-{task}-r{i}","#).unwrap(),
                Ids::None => {}
            }
            write!(
                out,
                r#""source":"bench-{task}","data":{{"file":"uploads/report-{n}.pdf","nodesCreated":{},"durationMs":{},"filler":"{filler}"}}}}"#,
                n % 50,
                n % 997
            )
            .unwrap();
        }
        if self.batch > 1 {
            out.push(']');
        }
        out.into()
    }
}

async fn ingest(
    addrs: &[SocketAddr],
    token: Option<String>,
    concurrency: usize,
    shape: IngestShape,
    duration: Duration,
) -> anyhow::Result<()> {
    let batch = shape.batch;
    let filler: Arc<str> = "x".repeat(shape.payload).into();
    let run: Arc<str> = format!("{:08x}", rand::random::<u32>()).into();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        // Producers spread round-robin over the replicas.
        let addr = addrs[task % addrs.len()];
        let token = token.clone();
        let (run, filler) = (run.clone(), filler.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut sender = http_conn(addr).await?;
            let mut counter = 0u64;
            let repeated = (shape.ids == Ids::Repeat).then(|| shape.body(&run, task, &mut 0, &filler));
            while Instant::now() < deadline {
                let body = match &repeated {
                    Some(b) => b.clone(),
                    None => shape.body(&run, task, &mut counter, &filler),
                };
                let t0 = Instant::now();
                sender.ready().await?;
                let res = sender.send_request(ingest_request(addr, &token, body)).await?;
                let status = res.status().as_u16();
                let _ = res.into_body().collect().await?;
                h.record(t0.elapsed().as_micros().max(1) as u64)?;
                *statuses.entry(status).or_default() += 1;
            }
            anyhow::Ok((h, statuses))
        }));
    }
    let mut h = hist();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for t in tasks {
        let (th, ts) = t.await??;
        h.add(th)?;
        for (k, v) in ts {
            *statuses.entry(k).or_default() += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = statuses.get(&202).copied().unwrap_or(0);
    let rps = h.len() as f64 / secs;
    let eps = (ok * batch as u64) as f64 / secs;
    let errors: BTreeMap<String, u64> =
        statuses.iter().filter(|(k, _)| **k != 202).map(|(k, v)| (k.to_string(), *v)).collect();
    report(
        "ingest",
        &[
            ("concurrency × batch", format!("{concurrency} × {batch} events, ids {}", shape.ids.name())),
            ("servers", format!("{}", addrs.len())),
            ("requests/s", format!("{rps:.0}")),
            ("events/s (202)", format!("{eps:.0}")),
            ("latency", lat_line(&h)),
            ("non-202", format!("{errors:?}")),
        ],
        json!({"concurrency": concurrency, "batch": batch, "ids": shape.ids.name(), "servers": addrs.len(), "seconds": secs, "requests_per_sec": rps,
               "events_per_sec": eps, "latency": summary(&h), "non_202": errors}),
    );
    Ok(())
}

/// Microseconds since the shared monotonic base.
fn now_us(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

/// The fields of a server message the fan-out clients read.
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

struct ClientResult {
    hist: Histogram<u64>,
    received: u64,
    out_of_order: u64,
    close_code: Option<u16>,
    seqs_first_last: Option<(u64, u64)>,
}

async fn fanout(
    addrs: &[SocketAddr],
    token: Option<String>,
    clients: usize,
    rate: u64,
    duration: Duration,
    per_request: u64,
) -> anyhow::Result<()> {
    let base = Instant::now();
    let run_id = format!("bench_{:08x}", rand::random::<u32>());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let open_started = Instant::now();
    for i in 0..clients {
        // Clients spread round-robin over the replicas; the producer uses the first.
        let addr = addrs[i % addrs.len()];
        let run_id = run_id.clone();
        let mut stop = stop_rx.clone();
        let opened = opened.clone();
        tasks.push(tokio::spawn(async move {
            let ws = match ws_connect(addr).await {
                Ok(ws) => ws,
                Err(e) => {
                    if i < 3 {
                        eprintln!("client {i}: connect failed: {e}");
                    }
                    return None;
                }
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let (mut tx, mut rx) = ws.split();
            let _ = tx.send(Message::Text(json!({"type": "subscribe", "types": [run_id]}).to_string().into())).await;
            let mut r =
                ClientResult { hist: hist(), received: 0, out_of_order: 0, close_code: None, seqs_first_last: None };
            let mut last_seq = 0u64;
            // One stop future per client, polled across iterations (a fresh
            // timer per message would cost the tool more than the server).
            let mut stopped = std::pin::pin!(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            loop {
                let msg = tokio::select! {
                    m = rx.next() => m,
                    _ = &mut stopped => break,
                };
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        // Borrowed, typed parse: the tool shares the CPU with the
                        // server, so it must spend as little as it can per message.
                        let Ok(v) = serde_json::from_str::<Stamped>(&t) else { continue };
                        if v.kind != run_id.as_str() {
                            continue;
                        }
                        let sent = v.data.and_then(|d| d.t).unwrap_or(0);
                        let seq = v.seq.unwrap_or(0);
                        let _ = r.hist.record(now_us(base).saturating_sub(sent).max(1));
                        r.received += 1;
                        if seq <= last_seq {
                            r.out_of_order += 1;
                        }
                        last_seq = seq;
                        r.seqs_first_last = Some((r.seqs_first_last.map_or(seq, |(f, _)| f), seq));
                    }
                    Some(Ok(Message::Close(f))) => {
                        r.close_code = Some(f.map_or(1005, |f| u16::from(f.code)));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        r.close_code = Some(1006);
                        break;
                    }
                }
            }
            Some(r)
        }));
    }
    // Wait until all are connected (bounded).
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while (opened.load(Ordering::Relaxed) as usize) < clients && Instant::now() < open_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = open_started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await; // subscriptions settle
                                                          // Producer: `rate` events/s, in 10 ms ticks (or `per_request` events every
                                                          // per_request/rate s), each with a unique id and stamped with the shared clock.
    let addr = addrs[0];
    let mut sender = http_conn(addr).await?;
    let total = rate * duration.as_secs();
    let (tick, per_tick) = if per_request == 0 {
        (Duration::from_millis(10), (rate as f64 / 100.0).max(0.01))
    } else {
        (Duration::from_secs_f64(per_request as f64 / rate as f64), per_request as f64)
    };
    let mut sent = 0u64;
    let mut owed = 0.0;
    let mut non202 = 0u64;
    let prod_started = Instant::now();
    let mut interval = tokio::time::interval(tick);
    while sent < total && prod_started.elapsed() < duration + Duration::from_secs(5) {
        interval.tick().await;
        owed += per_tick;
        let n = (owed as u64).min(total - sent);
        if n == 0 {
            continue;
        }
        owed -= n as f64;
        let t = now_us(base);
        let events: Vec<_> = (sent..sent + n)
            .map(|i| json!({"type": run_id, "id": format!("{run_id}-{i}"), "data": {"t": t}}))
            .collect();
        sender.ready().await?;
        let res = sender.send_request(ingest_request(addr, &token, serde_json::to_vec(&events)?.into())).await?;
        if res.status() != 202 {
            non202 += n;
        }
        let _ = res.into_body().collect().await;
        sent += n;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // drain
    stop_tx.send_replace(true);
    let mut h = hist();
    let (mut received, mut ooo, mut connected) = (0u64, 0u64, 0usize);
    let mut closes: BTreeMap<u16, u64> = BTreeMap::new();
    for t in tasks {
        if let Some(r) = t.await? {
            connected += 1;
            h.add(&r.hist)?;
            received += r.received;
            ooo += r.out_of_order;
            if let Some(c) = r.close_code {
                *closes.entry(c).or_default() += 1;
            }
        }
    }
    let expected = (sent - non202) * connected as u64;
    let lost = expected.saturating_sub(received);
    let secs = duration.as_secs_f64();
    report(
        "fanout",
        &[
            ("clients connected", format!("{connected}/{clients} in {open_secs:.2} s")),
            ("events sent", format!("{sent} ({rate}/s), non-202: {non202}")),
            ("delivered messages/s", format!("{:.0}", received as f64 / secs)),
            ("ingest→delivery", lat_line(&h)),
            ("lost", format!("{lost} of {expected}")),
            ("out of order", format!("{ooo}")),
            ("server-closed", format!("{closes:?}")),
        ],
        json!({"clients": clients, "connected": connected, "rate": rate, "per_request": per_request, "seconds": secs, "sent": sent,
               "delivered": received, "delivered_per_sec": received as f64 / secs, "latency": summary(&h),
               "lost": lost, "out_of_order": ooo, "closed": closes}),
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

async fn conns(addr: SocketAddr, clients: usize, server_pid: Option<u32>, hold: Duration) -> anyhow::Result<()> {
    let before = server_pid.and_then(rss_kib);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(clients);
    let mut failed = 0;
    // Open in waves of 200 concurrent handshakes.
    for chunk in (0..clients).collect::<Vec<_>>().chunks(200) {
        let mut set = tokio::task::JoinSet::new();
        for _ in chunk {
            set.spawn(ws_connect(addr));
        }
        while let Some(r) = set.join_next().await {
            match r? {
                Ok(ws) => sockets.push(ws),
                Err(e) => {
                    if failed < 3 {
                        eprintln!("connect failed: {e}");
                    }
                    failed += 1;
                }
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(hold).await;
    let after = server_pid.and_then(rss_kib);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if !sockets.is_empty() => Some((a.saturating_sub(b)) as f64 / sockets.len() as f64),
        _ => None,
    };
    report(
        "conns",
        &[
            ("connections open", format!("{} ({} failed) in {open_secs:.2} s", sockets.len(), failed)),
            ("server RSS before/after", format!("{before:?} / {after:?} KiB")),
            ("RSS per connection", per_conn.map_or("n/a (pass --server-pid)".into(), |v| format!("{v:.1} KiB"))),
        ],
        json!({"clients": clients, "open": sockets.len(), "failed": failed, "open_seconds": open_secs,
               "rss_before_kib": before, "rss_after_kib": after, "rss_per_conn_kib": per_conn}),
    );
    drop(sockets);
    Ok(())
}

async fn e2e(
    addr: SocketAddr,
    dashboard: SocketAddr,
    token: Option<String>,
    count: u64,
    gap_ms: u64,
) -> anyhow::Result<()> {
    let base = Instant::now();
    let run_id = format!("bench_{:08x}", rand::random::<u32>());
    let (mut tx, mut rx) = ws_connect(dashboard).await?.split();
    tx.send(Message::Text(json!({"type": "subscribe", "types": [run_id]}).to_string().into())).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sender = http_conn(addr).await?;
    let mut h = hist();
    let deadline = Instant::now() + Duration::from_secs(MAX_DURATION_SECS);
    for i in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let t = now_us(base);
        let body = json!({"type": run_id, "id": format!("{run_id}-{i}"), "data": {"t": t, "i": i}}).to_string();
        sender.ready().await?;
        let res = sender.send_request(ingest_request(addr, &token, body.into())).await?;
        let _ = res.into_body().collect().await;
        // Wait for this event on the socket.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["type"] == run_id.as_str() && v["data"]["i"] == i {
                        h.record(now_us(base).saturating_sub(v["data"]["t"].as_u64().unwrap_or(0)).max(1))?;
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => bail!("event {i} was not delivered within 5 s"),
            }
        }
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
    report(
        "e2e",
        &[
            ("events", format!("{}", h.len())),
            ("ingest / dashboard", format!("{addr} / {dashboard}")),
            ("ingest→delivery", lat_line(&h)),
        ],
        json!({"count": h.len(), "ingest": addr.to_string(), "dashboard": dashboard.to_string(), "latency": summary(&h)}),
    );
    Ok(())
}
