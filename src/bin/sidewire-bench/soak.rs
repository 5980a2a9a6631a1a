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

/// The replicas the soak starts, kills and restarts itself.
struct Replicas {
    cmd: String,
    log_dir: std::path::PathBuf,
    children: Mutex<Vec<Option<std::process::Child>>>,
}

impl Replicas {
    fn spawn(&self, i: usize) -> anyhow::Result<u32> {
        let cmd = self.cmd.replace("{i}", &(i + 1).to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("replica-{}.log", i + 1)))?;
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start replica {}: {cmd}", i + 1))?;
        let pid = child.id();
        self.children.lock()[i] = Some(child);
        Ok(pid)
    }

    fn kill9(&self, i: usize) {
        if let Some(mut c) = self.children.lock()[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to every replica, then up to 15 s for them to leave.
    async fn stop_all(&self) {
        for c in self.children.lock().iter().flatten() {
            // SAFETY: a plain kill(2) to our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut running = 0;
            for c in self.children.lock().iter_mut().flatten() {
                if matches!(c.try_wait(), Ok(None)) {
                    running += 1;
                }
            }
            if running == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n = self.children.lock().len(); // not in the loop head: the guard would live through kill9's lock
        for i in 0..n {
            self.kill9(i);
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in self.children.get_mut().iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `/readyz` answers 200 (60 s at most).
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = async {
            let mut s = http_conn(addr).await?;
            let req =
                http::Request::get("/readyz").header(http::header::HOST, addr.to_string()).body(Full::default())?;
            let res = tokio::time::timeout(Duration::from_secs(2), s.send_request(req)).await??;
            anyhow::Ok(res.status() == 200)
        }
        .await;
        if matches!(ok, Ok(true)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
            if let (Some(rss), Some(fds)) = (rss, fds) {
                // The growth check counts fds besides the open dashboards:
                // with several servers, dashboards move between them as they
                // resume elsewhere, so the raw count swings by hundreds
                // without anything leaking.
                let dashboards = connection_books(s.addr).await.map_or(0, |(active, _, _)| active as u64);
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

/// Single events with unique ids at `rate` per second, in 10 ms ticks,
/// starting on server `k % n`. An event is sent until it gets a 202: after
/// a connection error or a 5xx, the same body (same id) goes to the next
/// server that is up; after 30 s it counts as never acknowledged.
async fn producer(
    k: usize,
    run: String,
    token: Option<String>,
    rate: f64,
    base: Instant,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let n = shared.servers.len();
    let mut cur = k % n;
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let per_tick = rate / 100.0;
    let mut owed = 0.0;
    let mut count = 0u64;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shared.producing.load(Ordering::SeqCst) {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            count += 1;
            let body: Bytes = format!(
                r#"{{"type":"soak","id":"soak-{run}-{count}","data":{{"t":{},"file":"uploads/report-{count}.pdf","nodesCreated":{}}}}}"#,
                now_us(base),
                count % 50
            )
            .into();
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(30);
            shared.sent.fetch_add(1, Ordering::Relaxed);
            let mut first = true;
            let seq = loop {
                if !first {
                    shared.retries.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() > deadline {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                first = false;
                if !shared.servers[cur].up.load(Ordering::SeqCst) {
                    cur = shared.next_up(cur);
                    sender = None;
                }
                let addr = shared.servers[cur].addr;
                if sender.is_none() {
                    match http_conn(addr).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            cur = shared.next_up(cur);
                            continue;
                        }
                    }
                }
                let s = sender.as_mut().expect("connected");
                let answer = tokio::time::timeout(Duration::from_secs(10), async {
                    s.ready().await?;
                    let res = s.send_request(ingest_request(addr, &token, body.clone())).await?;
                    let status = res.status();
                    let bytes = res.into_body().collect().await?.to_bytes();
                    anyhow::Ok((status, bytes))
                })
                .await;
                match answer {
                    Ok(Ok((status, bytes))) if status == 202 => {
                        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                        break v["seqs"][0].as_u64();
                    }
                    Ok(Ok((status, _))) if status.is_server_error() || status == 429 => {
                        cur = shared.next_up(cur);
                        sender = None;
                    }
                    Ok(Ok((status, bytes))) => {
                        if shared.non202.load(Ordering::Relaxed) < 3 {
                            eprintln!("producer {k}: {status}: {}", String::from_utf8_lossy(&bytes));
                        }
                        break None;
                    }
                    Ok(Err(_)) | Err(_) => {
                        cur = shared.next_up(cur);
                        sender = None;
                    }
                }
            };
            Shared::record(&shared.ingest, t0.elapsed().as_micros() as u64);
            match seq {
                Some(seq) => {
                    shared.acked.lock().push(seq);
                    shared.last_acked.fetch_max(seq, Ordering::SeqCst);
                }
                None => {
                    shared.non202.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// One dashboard that keeps coming back with `?afterSeq`, each time on the
/// next server, checking that it sees the seqs after `start_seq` in order,
/// each once; the seqs it jumps over are checked against the acks at the end.
/// Dashboards `0..n` are also auditors (one id, one seq).
async fn client(
    i: usize,
    start_seq: u64,
    lifetime: Duration,
    base: Instant,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let n = shared.servers.len();
    let auditor = i < n;
    let mut cur = i % n;
    let mut last = start_seq;
    let mut stop = stop;
    let mut stopping = false;
    for attempt in 0u64.. {
        if !stopping && *stop.borrow() {
            stopping = true;
        }
        if attempt > 0 {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            cur = shared.next_up(cur);
        }
        let addr = shared.servers[cur].addr;
        let path = format!("/api/v1/ws/dashboard?afterSeq={last}");
        let mut ws = match ws_connect_path(addr, &path).await {
            Ok(ws) => ws,
            Err(e) => {
                if shared.connect_failures.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("client {i}: connect to {addr} failed: {e}");
                }
                if stopping && attempt > 20 {
                    break; // cannot catch up: what is missing counts as lost below
                }
                tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 800)).await;
                continue;
            }
        };
        let mut received = 0u64;
        // 0.5–1.5 × lifetime; after the stop signal, 10 s to catch up.
        let mut deadline = tokio::time::Instant::now()
            + if stopping { Duration::from_secs(10) } else { lifetime.mul_f64(0.5 + rand::random::<f64>()) };
        loop {
            if stopping && last >= shared.last_acked.load(Ordering::SeqCst) {
                break;
            }
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.changed(), if !stopping => {
                    // The producers have stopped: read up to their last seq.
                    stopping = true;
                    deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    continue;
                }
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Stamped>(&t) else { continue };
                    if v.kind != "soak" {
                        continue;
                    }
                    let seq = v.seq.unwrap_or(0);
                    if seq <= last {
                        if shared.doubled_or_reordered.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!(
                                "client {i}: seq {seq} after {last} from {addr} (connection {attempt}, {received} events on it)"
                            );
                        }
                        continue;
                    }
                    received += 1;
                    shared.gap(last + 1, seq - 1);
                    last = seq;
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = v.data.and_then(|d| d.t) {
                        Shared::record(&shared.delivery, now_us(base).saturating_sub(t));
                    }
                    if auditor {
                        audit(&shared, seq, v.id.unwrap_or(""));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        if stopping && (last >= shared.last_acked.load(Ordering::SeqCst) || tokio::time::Instant::now() >= deadline) {
            let _ = ws.close(None).await;
            break;
        }
        if rand::random::<bool>() {
            let _ = ws.close(None).await;
        } // else: dropped without a close frame
    }
    let target = shared.last_acked.load(Ordering::SeqCst);
    shared.gap(last + 1, target);
}

/// An id must arrive under one seq, and a seq carry one id, on every replica.
fn audit(shared: &Shared, seq: u64, id: &str) {
    let conflict = match shared.audit_by_seq.lock().entry(seq) {
        std::collections::hash_map::Entry::Occupied(e) => &**e.get() != id,
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(id.into());
            false
        }
    } || match shared.audit_by_id.lock().entry(id.into()) {
        std::collections::hash_map::Entry::Occupied(e) => *e.get() != seq,
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(seq);
            false
        }
    };
    if conflict && shared.conflicts.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("auditor: seq {seq} / id {id} conflicts with an earlier delivery");
    }
}

/// Stats and the activity page every second from a server that is up, as a
/// dashboard page would. A poll that failed across a kill is not counted.
async fn poller(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut cur = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        cur = shared.next_up(cur);
        let s = &shared.servers[cur];
        let epoch = s.epoch.load(Ordering::SeqCst);
        for path in ["/api/v1/stats", "/api/v1/activity/recent?limit=50"] {
            if get_json(s.addr, path).await.is_err()
                && s.epoch.load(Ordering::SeqCst) == epoch
                && s.up.load(Ordering::SeqCst)
                && shared.poll_errors.fetch_add(1, Ordering::Relaxed) < 3
            {
                eprintln!("poll {} {path} failed", s.addr);
            }
        }
    }
}

/// SIGHUP (a config reload) to every server that is up, every `every`.
async fn reloader(every: Duration, shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        for s in &shared.servers {
            let pid = s.pid.load(Ordering::SeqCst);
            // SAFETY: kill(2) to a server pid we were given or started.
            if pid > 0 && s.up.load(Ordering::SeqCst) && unsafe { libc::kill(pid as i32, libc::SIGHUP) } == 0 {
                shared.reloads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every `every`: SIGKILL one replica (round robin over 2..N; replica 1 when
/// alone), start it again with the same command, wait until it is ready.
async fn killer(
    replicas: Arc<Replicas>,
    every: Duration,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let n = shared.servers.len();
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    for round in 0usize.. {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        let i = if n == 1 { 0 } else { 1 + round % (n - 1) };
        let s = &shared.servers[i];
        s.up.store(false, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        let t0 = Instant::now();
        replicas.kill9(i);
        let pid = replicas.spawn(i)?;
        s.pid.store(pid as u64, Ordering::SeqCst);
        wait_ready(s.addr).await?;
        s.up.store(true, Ordering::SeqCst);
        shared.kills.fetch_add(1, Ordering::Relaxed);
        println!("  (kill -9 replica {} and restart: ready again in {:.2} s)", i + 1, t0.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Every `every`: cut the Redis proxy for `cut_for`.
async fn cutter(
    cut: Arc<tokio::sync::watch::Sender<bool>>,
    every: Duration,
    cut_for: Duration,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        cut.send_replace(true);
        shared.cuts.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(cut_for) => {}
            _ = stop.changed() => {}
        }
        cut.send_replace(false);
        if *stop.borrow() {
            return Ok(());
        }
    }
}

/// A TCP proxy to `upstream`; while `cut` is true every connection through
/// it is dropped and new ones are closed at once.
async fn proxy(listener: tokio::net::TcpListener, upstream: SocketAddr, cut: Arc<tokio::sync::watch::Sender<bool>>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { continue };
        if *cut.borrow() {
            drop(inbound);
            continue;
        }
        let mut cut_rx = cut.subscribe();
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut_rx.wait_for(|c| *c) => {}
            }
        });
    }
}
