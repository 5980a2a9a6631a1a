//! `sidewire-bench soak`: a bounded soak test of a running server, or of a
//! cluster of replicas.
//!
//! For the whole run, at once:
//! - `producers` producers ingest single events at a steady rate in total,
//!   each with a unique `id`, stamped with the tool's clock; with several
//!   `--url`s they are spread over the replicas, and a producer whose replica
//!   fails (connection error, 5xx) sends the same event (same id) to the next
//!   replica until it gets a 202 (30 s at most);
//! - `clients` dashboards, spread over the replicas, live a random while
//!   (around `lifetime`), then drop (half with a close frame, half abruptly)
//!   and come back with `?afterSeq=<last seen>` — on the next replica, so
//!   every reconnect is a resume somewhere else; each client must see every
//!   acknowledged seq of the run exactly once and in order. One dashboard per
//!   replica (the auditors) also checks that no id arrives under two seqs and
//!   no seq with two ids;
//! - a poller reads `/api/v1/stats` and `/api/v1/activity/recent` every second;
//! - each server gets SIGHUP (a config reload) every `reload_every` seconds.
//!
//! Cluster mode (`--replica-cmd`): the soak starts the replicas itself, kills
//! one with SIGKILL and restarts it every `kill_every`, and, with
//! `--redis-proxy`, runs a TCP proxy to Redis that it cuts every `cut_every`
//! for `cut_for` (every open connection through it dropped, new ones refused).
//!
//! Per period it prints RSS and open fds of each server (from /proc), the
//! ingest and delivery p99, reconnects and losses. It fails (exit 1) on a lost,
//! doubled or reordered event, an event never acknowledged, a failed poll,
//! unbalanced connection books or stats that differ between replicas, or RSS
//! / fd growth beyond the given bounds (per replica and process lifetime,
//! from the end of its first period).
//!
//! The load (producers, dashboards, poller, reloader) is in [`load`]; the
//! replicas and the Redis proxy of cluster mode are in [`cluster`].

mod cluster;
mod load;

use self::cluster::{cutter, killer, proxy, wait_ready, Replicas};
use self::load::{client, poller, producer, reloader};
use super::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

pub struct SoakOptions {
    pub duration: Duration,
    pub period: Duration,
    pub rate: u64,
    pub clients: usize,
    pub lifetime: Duration,
    pub reload_every: Duration,
    pub server_pid: Option<u32>,
    pub max_rss_growth_mib: u64,
    pub max_fd_growth: u64,
    pub producers: usize,
    pub replica_cmd: Option<String>,
    pub replica_log_dir: std::path::PathBuf,
    pub kill_every: Option<Duration>,
    pub redis_proxy: Option<(SocketAddr, SocketAddr)>,
    pub cut_every: Option<Duration>,
    pub cut_for: Duration,
}

/// One server of the run, as the tasks see it.
struct Server {
    addr: SocketAddr,
    /// False while it is being killed and restarted.
    up: AtomicBool,
    /// Bumped at every kill: a request that failed across one is not counted.
    epoch: AtomicU64,
    /// 0: unknown.
    pid: AtomicU64,
}

/// Counters shared by the tasks; the per-period histograms are swapped out
/// by the reporter.
#[derive(Default)]
struct Shared {
    ingest: Mutex<Option<Histogram<u64>>>,
    delivery: Mutex<Option<Histogram<u64>>>,
    sent: AtomicU64,
    non202: AtomicU64,
    retries: AtomicU64,
    delivered: AtomicU64,
    /// Seqs a dashboard jumped over (checked against the acks at the end).
    skipped: AtomicU64,
    gaps: Mutex<Vec<(u64, u64)>>,
    doubled_or_reordered: AtomicU64,
    /// The auditors: an id under two seqs, or a seq with two ids.
    conflicts: AtomicU64,
    audit_by_seq: Mutex<HashMap<u64, Box<str>>>,
    audit_by_id: Mutex<HashMap<Box<str>, u64>>,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    poll_errors: AtomicU64,
    reloads: AtomicU64,
    kills: AtomicU64,
    cuts: AtomicU64,
    /// Every seq a producer got a 202 for.
    acked: Mutex<Vec<u64>>,
    /// The highest of them.
    last_acked: AtomicU64,
    producing: AtomicBool,
    servers: Vec<Server>,
}

impl Shared {
    fn record(slot: &Mutex<Option<Histogram<u64>>>, us: u64) {
        if let Some(h) = slot.lock().as_mut() {
            let _ = h.record(us.max(1));
        }
    }

    fn take(slot: &Mutex<Option<Histogram<u64>>>) -> Histogram<u64> {
        slot.lock().replace(hist()).unwrap_or_else(hist)
    }

    /// The next server after `i` that is up (or `i + 1` when none is).
    fn next_up(&self, i: usize) -> usize {
        let n = self.servers.len();
        (1..=n).map(|k| (i + k) % n).find(|&j| self.servers[j].up.load(Ordering::SeqCst)).unwrap_or((i + 1) % n)
    }

    fn gap(&self, from: u64, to: u64) {
        if to >= from {
            self.skipped.fetch_add(to - from + 1, Ordering::Relaxed);
            self.gaps.lock().push((from, to));
        }
    }
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = http_conn(addr).await?;
    let req = http::Request::get(path).header(http::header::HOST, addr.to_string()).body(Full::default())?;
    let res = tokio::time::timeout(Duration::from_secs(5), s.send_request(req)).await??;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    if status != 200 {
        bail!("{path}: {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

pub async fn soak(addrs: Vec<SocketAddr>, token: Option<String>, o: SoakOptions) -> anyhow::Result<()> {
    let n = addrs.len();
    let base = Instant::now();
    let servers = addrs
        .iter()
        .map(|&addr| Server { addr, up: AtomicBool::new(true), epoch: AtomicU64::new(0), pid: AtomicU64::new(0) })
        .collect();
    let shared = Arc::new(Shared { servers, ..Default::default() });
    *shared.ingest.lock() = Some(hist());
    *shared.delivery.lock() = Some(hist());
    shared.producing.store(true, Ordering::SeqCst);
    if let (Some(pid), false) = (o.server_pid, o.replica_cmd.is_some()) {
        shared.servers[0].pid.store(pid as u64, Ordering::SeqCst);
    }
    let (chaos_stop_tx, chaos_stop_rx) = tokio::sync::watch::channel(false);

    // Cluster mode: the Redis proxy first (the replicas connect through it),
    // then the replicas.
    let cut = Arc::new(tokio::sync::watch::channel(false).0);
    if let Some((listen, upstream)) = o.redis_proxy {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("proxy on {listen}"))?;
        tokio::spawn(proxy(listener, upstream, cut.clone()));
    }
    let replicas = match &o.replica_cmd {
        Some(cmd) => {
            std::fs::create_dir_all(&o.replica_log_dir)?;
            let r = Arc::new(Replicas {
                cmd: cmd.clone(),
                log_dir: o.replica_log_dir.clone(),
                children: Mutex::new((0..n).map(|_| None).collect()),
            });
            for i in 0..n {
                let pid = r.spawn(i)?;
                shared.servers[i].pid.store(pid as u64, Ordering::SeqCst);
            }
            for s in &shared.servers {
                wait_ready(s.addr).await?;
            }
            Some(r)
        }
        None => None,
    };

    let start = get_json(addr_of(&shared, 0), "/api/v1/stats").await?;
    let start_seq = start["lastSeq"].as_u64().context("stats without lastSeq")?;
    let start_total = start["eventsTotal"].as_u64();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..o.clients {
        clients.spawn(client(i, start_seq, o.lifetime, base, shared.clone(), stop_rx.clone()));
    }
    let run = format!("{:08x}", rand::random::<u32>());
    let producers: Vec<_> = (0..o.producers)
        .map(|k| {
            let rate = o.rate as f64 / o.producers as f64;
            tokio::spawn(producer(k, format!("{run}-{k}"), token.clone(), rate, base, shared.clone()))
        })
        .collect();
    let poller = tokio::spawn(poller(shared.clone(), stop_rx.clone()));
    let reloader = tokio::spawn(reloader(o.reload_every, shared.clone(), chaos_stop_rx.clone()));
    let killer = match (&replicas, o.kill_every) {
        (Some(r), Some(every)) => Some(tokio::spawn(killer(r.clone(), every, shared.clone(), chaos_stop_rx.clone()))),
        _ => None,
    };
    let cutter = match (o.redis_proxy, o.cut_every) {
        (Some(_), Some(every)) => {
            Some(tokio::spawn(cutter(cut.clone(), every, o.cut_for, shared.clone(), chaos_stop_rx.clone())))
        }
        _ => None,
    };

    println!(
        "== sidewire-bench soak: {n} server(s), {} producers, {} clients, {} events/s, {:?}",
        o.producers, o.clients, o.rate, o.duration
    );
    println!(
        "  {:>6} {:>20} {:>16} {:>12} {:>14} {:>10} {:>7} {:>7} {:>5} {:>5}",
        "period", "RSS MiB", "fds", "ingest p99", "delivery p99", "reconnects", "skipped", "reloads", "kills", "cuts"
    );
    let mut rows = Vec::new();
    // Per server: (pid, RSS KiB, fds) at the end of the first period of that
    // process, and the largest growth seen since, over all its processes.
    let mut baselines: Vec<Option<(u64, u64, u64)>> = vec![None; n];
    let mut worst = (0i64, 0i64);
    let started = Instant::now();
    let mut period_end = started;
    while period_end < started + o.duration {
        period_end = (period_end + o.period).min(started + o.duration);
        tokio::time::sleep_until(period_end.into()).await;
        let (ih, dh) = (Shared::take(&shared.ingest), Shared::take(&shared.delivery));
        let mut rss_all = Vec::new();
        let mut fds_all = Vec::new();
        for (i, s) in shared.servers.iter().enumerate() {
            let pid = s.pid.load(Ordering::SeqCst);
            let up = s.up.load(Ordering::SeqCst);
            let (rss, fds) = if pid > 0 && up { (rss_kib(pid as u32), open_fds(pid as u32)) } else { (None, None) };
            // The growth check counts fds besides the open dashboards: with
            // several servers, dashboards move between them as they resume
            // elsewhere, so the raw count swings by hundreds without anything
            // leaking. A sample whose scrape failed is not judged.
            let dashboards = match (rss, fds) {
                (Some(_), Some(_)) => connection_books(s.addr).await.ok().map(|(active, _, _)| active as u64),
                _ => None,
            };
            if let (Some(rss), Some(fds), Some(dashboards)) = (rss, fds, dashboards) {
                let others = fds.saturating_sub(dashboards);
                match baselines[i] {
                    Some((p, r0, f0)) if p == pid => {
                        worst.0 = worst.0.max(rss as i64 - r0 as i64);
                        worst.1 = worst.1.max(others as i64 - f0 as i64);
                    }
                    _ => baselines[i] = Some((pid, rss, others)),
                }
            }
            rss_all.push(rss);
            fds_all.push(fds);
        }
        let show = |v: &[Option<u64>], f: &dyn Fn(u64) -> String| {
            v.iter().map(|x| x.map_or("-".into(), f)).collect::<Vec<_>>().join("/")
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let row = json!({
            "period": rows.len() + 1,
            "rss_kib": rss_all, "open_fds": fds_all,
            "ingest_p99_ms": ih.value_at_quantile(0.99) as f64 / 1000.0,
            "delivery_p99_ms": dh.value_at_quantile(0.99) as f64 / 1000.0,
            "delivered": dh.len(),
            "reconnects": get(&shared.reconnects),
            "skipped": get(&shared.skipped),
            "reloads": get(&shared.reloads),
            "kills": get(&shared.kills),
            "cuts": get(&shared.cuts),
        });
        println!(
            "  {:>6} {:>20} {:>16} {:>9.2} ms {:>11.2} ms {:>10} {:>7} {:>7} {:>5} {:>5}",
            rows.len() + 1,
            show(&rss_all, &|r: u64| format!("{:.1}", r as f64 / 1024.0)),
            show(&fds_all, &|f: u64| f.to_string()),
            row["ingest_p99_ms"].as_f64().unwrap_or(0.0),
            row["delivery_p99_ms"].as_f64().unwrap_or(0.0),
            row["reconnects"],
            row["skipped"],
            row["reloads"],
            row["kills"],
            row["cuts"],
        );
        rows.push(row);
    }

    // Stop producing and the chaos (every replica back up, Redis reachable),
    // then let every client catch up to the last acknowledged seq
    // (reconnecting if it was between connections), then stop them.
    shared.producing.store(false, Ordering::SeqCst);
    for p in producers {
        let _ = p.await;
    }
    chaos_stop_tx.send_replace(true);
    for t in [killer, cutter].into_iter().flatten() {
        t.await??;
    }
    let _ = reloader.await;
    stop_tx.send_replace(true);
    let mut clients_done = 0;
    while let Some(r) = clients.join_next().await {
        r?;
        clients_done += 1;
    }
    let _ = poller.await;

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    // Lost: acknowledged seqs some dashboard jumped over or never reached.
    let mut acked = std::mem::take(&mut *shared.acked.lock());
    acked.sort_unstable();
    let acked_events = acked.len();
    acked.dedup();
    if acked.len() != acked_events {
        failures.push(format!("{} acknowledged events share a seq with another", acked_events - acked.len()));
    }
    let gaps = std::mem::take(&mut *shared.gaps.lock());
    let lost: u64 = gaps
        .iter()
        .map(|&(a, b)| (acked.partition_point(|&s| s <= b) - acked.partition_point(|&s| s < a)) as u64)
        .sum();
    let gap_total: u64 = gaps.iter().map(|&(a, b)| b - a + 1).sum();
    let holes = gap_total - lost; // skipped seqs nobody was told about

    // Every connection a server opened must be closed and counted once with
    // its reason (a connection task that died would be missing); every
    // replica must show the same stats.
    for s in &shared.servers {
        let mut books = connection_books(s.addr).await;
        let settle = Instant::now() + Duration::from_secs(10);
        while matches!(books, Ok((active, _, _)) if active > 0.0) && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(200)).await;
            books = connection_books(s.addr).await;
        }
        match books {
            Ok((active, opened, closed)) if active == 0.0 && opened == closed => {}
            Ok((active, opened, closed)) => failures.push(format!(
                "{}: connection books do not balance: {opened} opened, {closed} disconnects counted, {active} still active",
                s.addr
            )),
            Err(e) => failures.push(format!("{}: cannot read /metrics: {e}", s.addr)),
        }
    }
    let mut agreed = None;
    let settle = Instant::now() + Duration::from_secs(20);
    let mut last_view = Vec::new();
    while Instant::now() < settle {
        let mut view = Vec::new();
        for s in &shared.servers {
            let v = get_json(s.addr, "/api/v1/stats").await.unwrap_or_default();
            view.push((v["lastSeq"].as_u64(), v["eventsTotal"].as_u64(), v["replicas"].as_u64()));
        }
        let same = view.windows(2).all(|w| w[0] == w[1])
            && view[0].0 >= Some(shared.last_acked.load(Ordering::SeqCst))
            && (n == 1 || view[0].2 == Some(n as u64));
        last_view = view;
        if same {
            agreed = Some(last_view[0]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match agreed {
        Some((_, Some(total), _)) => {
            // Every acknowledged event is in the store exactly once, and
            // nothing else arrived.
            if let Some(t0) = start_total {
                let stored = total.saturating_sub(t0);
                if stored != acked.len() as u64 {
                    failures.push(format!("the store counted {stored} new events, {} were acknowledged", acked.len()));
                }
            }
        }
        Some(_) => {}
        None => failures.push(format!("replicas disagree on (lastSeq, eventsTotal, replicas): {last_view:?}")),
    }

    for (what, n) in [
        ("lost events (acknowledged, not delivered to some dashboard)", lost),
        ("doubled or reordered events", get(&shared.doubled_or_reordered)),
        ("events with two seqs or seqs with two ids", get(&shared.conflicts)),
        ("events never acknowledged", get(&shared.non202)),
        ("failed polls", get(&shared.poll_errors)),
    ] {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    let (rss_growth_kib, fd_growth) = worst;
    if rss_growth_kib > (o.max_rss_growth_mib * 1024) as i64 {
        failures.push(format!(
            "RSS grew {rss_growth_kib} KiB after a process's first period (max {} MiB)",
            o.max_rss_growth_mib
        ));
    }
    if fd_growth > o.max_fd_growth as i64 {
        failures.push(format!("open fds grew by {fd_growth} after a process's first period (max {})", o.max_fd_growth));
    }
    if let Some(r) = &replicas {
        r.stop_all().await;
    }
    report(
        "soak",
        &[
            (
                "events sent",
                format!(
                    "{} ({} acknowledged, {} never, {} retried requests)",
                    get(&shared.sent),
                    acked_events,
                    get(&shared.non202),
                    get(&shared.retries)
                ),
            ),
            ("deliveries", format!("{}", get(&shared.delivered))),
            ("lost / holes", format!("{lost} / {holes} (seqs skipped that no producer was acknowledged)")),
            ("reconnects", format!("{} ({} failed connects)", get(&shared.reconnects), get(&shared.connect_failures))),
            ("clients finished", format!("{clients_done}/{}", o.clients)),
            ("kills / Redis cuts", format!("{} / {}", get(&shared.kills), get(&shared.cuts))),
            ("stats agreed", format!("{agreed:?} (lastSeq, eventsTotal, replicas)")),
            ("RSS / fd growth", format!("{rss_growth_kib} KiB / {fd_growth} (worst process)")),
            ("verdict", if failures.is_empty() { "ok".into() } else { failures.join("; ") }),
        ],
        json!({"servers": n, "producers": o.producers, "clients": o.clients, "rate": o.rate,
               "seconds": o.duration.as_secs_f64(), "periods": rows,
               "sent": get(&shared.sent), "acknowledged": acked_events, "non_202": get(&shared.non202),
               "retries": get(&shared.retries), "delivered": get(&shared.delivered),
               "lost": lost, "holes": holes, "doubled_or_reordered": get(&shared.doubled_or_reordered),
               "conflicts": get(&shared.conflicts), "reconnects": get(&shared.reconnects),
               "poll_errors": get(&shared.poll_errors), "kills": get(&shared.kills), "cuts": get(&shared.cuts),
               "rss_growth_kib": rss_growth_kib, "fd_growth": fd_growth, "ok": failures.is_empty()}),
    );
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}

fn addr_of(shared: &Shared, i: usize) -> SocketAddr {
    shared.servers[i].addr
}

/// `(active, opened, disconnects)` from the server's WebSocket metrics.
async fn connection_books(addr: SocketAddr) -> anyhow::Result<(f64, f64, f64)> {
    let mut s = http_conn(addr).await?;
    let req = http::Request::get("/metrics").header(http::header::HOST, addr.to_string()).body(Full::default())?;
    let text = String::from_utf8(s.send_request(req).await?.into_body().collect().await?.to_bytes().to_vec())?;
    let (mut active, mut opened, mut closed) = (0.0, 0.0, 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let value: f64 = value.parse().unwrap_or(0.0);
        if name == "sidewire_ws_active_connections" {
            active = value;
        } else if name == "sidewire_ws_connections_total" {
            opened = value;
        } else if name.starts_with("sidewire_ws_disconnects_total{") {
            closed += value;
        }
    }
    Ok((active, opened, closed))
}
