//! `sidewire-bench soak`: a bounded soak test of a running server.
//!
//! For the whole run, at once:
//! - a producer ingests single events at a steady rate, each with a unique
//!   `id`, stamped with the tool's clock;
//! - `clients` dashboards live a random while (around `lifetime`), then drop
//!   (half with a close frame, half abruptly) and come back with
//!   `?afterSeq=<last seen>`; every connection is a resume, so each client
//!   must see every seq of the run exactly once and in order;
//! - a poller reads `/api/v1/stats` and `/api/v1/activity/recent` every second;
//! - the server gets SIGHUP (a config reload) every `reload_every` seconds.
//!
//! Per period it prints RSS and open fds of the server (from /proc), the
//! ingest and delivery p99, reconnects and losses. It fails (exit 1) on a lost,
//! doubled or reordered event, a non-202, a failed poll, or RSS / fd growth
//! beyond the given bounds between the end of the first period and the end.

use super::*;
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
}

/// Counters shared by the tasks; the per-period histograms are swapped out
/// by the reporter.
#[derive(Default)]
struct Shared {
    ingest: parking_lot::Mutex<Option<Histogram<u64>>>,
    delivery: parking_lot::Mutex<Option<Histogram<u64>>>,
    sent: AtomicU64,
    non202: AtomicU64,
    delivered: AtomicU64,
    lost: AtomicU64,
    doubled_or_reordered: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    poll_errors: AtomicU64,
    reloads: AtomicU64,
    /// The highest seq the producer got a 202 for.
    last_acked: AtomicU64,
    producing: AtomicBool,
}

impl Shared {
    fn record(slot: &parking_lot::Mutex<Option<Histogram<u64>>>, us: u64) {
        if let Some(h) = slot.lock().as_mut() {
            let _ = h.record(us.max(1));
        }
    }

    fn take(slot: &parking_lot::Mutex<Option<Histogram<u64>>>) -> Histogram<u64> {
        slot.lock().replace(hist()).unwrap_or_else(hist)
    }
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The seq the server had accepted last, from `/api/v1/stats`.
async fn last_seq(addr: SocketAddr) -> anyhow::Result<u64> {
    let mut s = http_conn(addr).await?;
    let req = http::Request::get("/api/v1/stats").header(http::header::HOST, addr.to_string()).body(Full::default())?;
    let res = s.send_request(req).await?;
    let body = res.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["lastSeq"].as_u64().context("stats without lastSeq")
}

pub async fn soak(addr: SocketAddr, token: Option<String>, o: SoakOptions) -> anyhow::Result<()> {
    let base = Instant::now();
    let shared = Arc::new(Shared::default());
    *shared.ingest.lock() = Some(hist());
    *shared.delivery.lock() = Some(hist());
    shared.producing.store(true, Ordering::SeqCst);
    let start_seq = last_seq(addr).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..o.clients {
        clients.spawn(client(addr, i, start_seq, o.lifetime, base, shared.clone(), stop_rx.clone()));
    }
    let producer = tokio::spawn(producer(addr, token, o.rate, base, shared.clone()));
    let poller = tokio::spawn(poller(addr, shared.clone(), stop_rx.clone()));
    let reloader = o.server_pid.map(|pid| tokio::spawn(reloader(pid, o.reload_every, shared.clone(), stop_rx.clone())));

    println!("== sidewire-bench soak: {} clients, {} events/s, {:?}", o.clients, o.rate, o.duration);
    println!(
        "  {:>6} {:>10} {:>7} {:>12} {:>14} {:>10} {:>6} {:>9}",
        "period", "RSS MiB", "fds", "ingest p99", "delivery p99", "reconnects", "lost", "reloads"
    );
    let mut rows = Vec::new();
    let started = Instant::now();
    let mut period_end = started;
    while period_end < started + o.duration {
        period_end = (period_end + o.period).min(started + o.duration);
        tokio::time::sleep_until(period_end.into()).await;
        let (ih, dh) = (Shared::take(&shared.ingest), Shared::take(&shared.delivery));
        let rss = o.server_pid.and_then(rss_kib);
        let fds = o.server_pid.and_then(open_fds);
        let row = json!({
            "period": rows.len() + 1,
            "rss_kib": rss, "open_fds": fds,
            "ingest_p99_ms": ih.value_at_quantile(0.99) as f64 / 1000.0,
            "delivery_p99_ms": dh.value_at_quantile(0.99) as f64 / 1000.0,
            "delivered": dh.len(),
            "reconnects": shared.reconnects.load(Ordering::Relaxed),
            "lost": shared.lost.load(Ordering::Relaxed),
            "reloads": shared.reloads.load(Ordering::Relaxed),
        });
        println!(
            "  {:>6} {:>10} {:>7} {:>9.2} ms {:>11.2} ms {:>10} {:>6} {:>9}",
            rows.len() + 1,
            rss.map_or("n/a".into(), |r| format!("{:.1}", r as f64 / 1024.0)),
            fds.map_or("n/a".into(), |f| f.to_string()),
            row["ingest_p99_ms"].as_f64().unwrap_or(0.0),
            row["delivery_p99_ms"].as_f64().unwrap_or(0.0),
            row["reconnects"],
            row["lost"],
            row["reloads"],
        );
        rows.push(row);
    }

    // Stop producing, then let every client catch up to the last acknowledged
    // seq (reconnecting if it was between connections), then stop them.
    shared.producing.store(false, Ordering::SeqCst);
    let _ = producer.await;
    stop_tx.send_replace(true);
    let mut clients_done = 0;
    while let Some(r) = clients.join_next().await {
        r?;
        clients_done += 1;
    }
    let _ = poller.await;
    if let Some(r) = reloader {
        let _ = r.await;
    }

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut failures = Vec::new();
    // Every connection the server opened must be closed and counted once
    // with its reason (a connection task that died would be missing).
    let mut books = connection_books(addr).await;
    let settle = Instant::now() + Duration::from_secs(10);
    while matches!(books, Ok((active, _, _)) if active > 0.0) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
        books = connection_books(addr).await;
    }
    match books {
        Ok((active, opened, closed)) if active == 0.0 && opened == closed => {}
        Ok((active, opened, closed)) => failures.push(format!(
            "connection books do not balance: {opened} opened, {closed} disconnects counted, {active} still active"
        )),
        Err(e) => failures.push(format!("cannot read /metrics: {e}")),
    }
    for (what, n) in [
        ("lost events", get(&shared.lost)),
        ("doubled or reordered events", get(&shared.doubled_or_reordered)),
        ("non-202 ingest answers", get(&shared.non202)),
        ("failed polls", get(&shared.poll_errors)),
    ] {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    let first = rows.first().cloned().unwrap_or_default();
    let last = rows.last().cloned().unwrap_or_default();
    let growth = |k: &str| last[k].as_u64().unwrap_or(0) as i64 - first[k].as_u64().unwrap_or(0) as i64;
    let (rss_growth_kib, fd_growth) = (growth("rss_kib"), growth("open_fds"));
    if rows.len() > 1 && rss_growth_kib > (o.max_rss_growth_mib * 1024) as i64 {
        failures
            .push(format!("RSS grew {rss_growth_kib} KiB after the first period (max {} MiB)", o.max_rss_growth_mib));
    }
    if rows.len() > 1 && fd_growth > o.max_fd_growth as i64 {
        failures.push(format!("open fds grew by {fd_growth} after the first period (max {})", o.max_fd_growth));
    }
    report(
        "soak",
        &[
            ("events sent", format!("{} ({} non-202)", get(&shared.sent), get(&shared.non202))),
            ("deliveries", format!("{}", get(&shared.delivered))),
            ("reconnects", format!("{} ({} failed connects)", get(&shared.reconnects), get(&shared.connect_failures))),
            ("clients finished", format!("{clients_done}/{}", o.clients)),
            ("RSS / fd growth", format!("{rss_growth_kib} KiB / {fd_growth}")),
            ("verdict", if failures.is_empty() { "ok".into() } else { failures.join("; ") }),
        ],
        json!({"clients": o.clients, "rate": o.rate, "seconds": o.duration.as_secs_f64(), "periods": rows,
               "sent": get(&shared.sent), "non_202": get(&shared.non202), "delivered": get(&shared.delivered),
               "lost": get(&shared.lost), "doubled_or_reordered": get(&shared.doubled_or_reordered),
               "reconnects": get(&shared.reconnects), "poll_errors": get(&shared.poll_errors),
               "rss_growth_kib": rss_growth_kib, "fd_growth": fd_growth, "ok": failures.is_empty()}),
    );
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
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

/// Single events with unique ids at `rate` per second, in 10 ms ticks.
async fn producer(
    addr: SocketAddr,
    token: Option<String>,
    rate: u64,
    base: Instant,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let run = format!("{:08x}", rand::random::<u32>());
    let mut sender = http_conn(addr).await?;
    let per_tick = rate as f64 / 100.0;
    let mut owed = 0.0;
    let mut n = 0u64;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while shared.producing.load(Ordering::SeqCst) {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            n += 1;
            let body = format!(
                r#"{{"type":"soak","id":"soak-{run}-{n}","data":{{"t":{},"file":"uploads/report-{n}.pdf","nodesCreated":{}}}}}"#,
                now_us(base),
                n % 50
            );
            let t0 = Instant::now();
            let answer = async {
                sender.ready().await?;
                let res = sender.send_request(ingest_request(addr, &token, body.into())).await?;
                let status = res.status();
                let bytes = res.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, bytes))
            }
            .await;
            Shared::record(&shared.ingest, t0.elapsed().as_micros() as u64);
            shared.sent.fetch_add(1, Ordering::Relaxed);
            match answer {
                Ok((status, bytes)) if status == 202 => {
                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                    if let Some(seq) = v["seqs"][0].as_u64() {
                        shared.last_acked.fetch_max(seq, Ordering::SeqCst);
                    }
                }
                Ok(_) => {
                    shared.non202.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    shared.non202.fetch_add(1, Ordering::Relaxed);
                    sender = http_conn(addr).await?;
                }
            }
        }
    }
    Ok(())
}

/// One dashboard that keeps coming back with `?afterSeq`, checking that it
/// sees every seq after `start_seq` exactly once, in order.
async fn client(
    addr: SocketAddr,
    i: usize,
    start_seq: u64,
    lifetime: Duration,
    base: Instant,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = start_seq;
    let mut stop = stop;
    let mut stopping = false;
    for attempt in 0u64.. {
        if !stopping && *stop.borrow() {
            stopping = true;
        }
        if attempt > 0 {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let path = format!("/api/v1/ws/dashboard?afterSeq={last}");
        let mut ws = match ws_connect_path(addr, &path).await {
            Ok(ws) => ws,
            Err(e) => {
                if shared.connect_failures.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("client {i}: connect failed: {e}");
                }
                if stopping {
                    break; // cannot catch up: what is missing counts as lost below
                }
                tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 800)).await;
                continue;
            }
        };
        // 0.5–1.5 × lifetime; after the stop signal, 5 s to catch up.
        let mut deadline = tokio::time::Instant::now()
            + if stopping { Duration::from_secs(5) } else { lifetime.mul_f64(0.5 + rand::random::<f64>()) };
        loop {
            if stopping && last >= shared.last_acked.load(Ordering::SeqCst) {
                break;
            }
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.changed(), if !stopping => {
                    // The producer has stopped: read up to its last seq.
                    stopping = true;
                    deadline = tokio::time::Instant::now() + Duration::from_secs(5);
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
                        shared.doubled_or_reordered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    shared.lost.fetch_add(seq - last - 1, Ordering::Relaxed);
                    last = seq;
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = v.data.and_then(|d| d.t) {
                        Shared::record(&shared.delivery, now_us(base).saturating_sub(t));
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
    shared.lost.fetch_add(target.saturating_sub(last), Ordering::Relaxed);
}

/// Stats and the activity page every second, as a dashboard page would.
async fn poller(addr: SocketAddr, shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        for path in ["/api/v1/stats", "/api/v1/activity/recent?limit=50"] {
            let ok = async {
                let mut s = http_conn(addr).await?;
                let req = http::Request::get(path).header(http::header::HOST, addr.to_string()).body(Full::default())?;
                let res = s.send_request(req).await?;
                let status = res.status();
                let _ = res.into_body().collect().await?;
                anyhow::Ok(status == 200)
            }
            .await;
            if !matches!(ok, Ok(true)) {
                shared.poll_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// SIGHUP to the server (a config reload) every `every`.
async fn reloader(pid: u32, every: Duration, shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let sent = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status();
        if matches!(sent, Ok(s) if s.success()) {
            shared.reloads.fetch_add(1, Ordering::Relaxed);
        }
    }
}
