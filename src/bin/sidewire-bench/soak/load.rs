//! The load of a soak: producers, dashboards (and their audit), the poller
//! and the reloader.

use super::*;

/// Single events with unique ids at `rate` per second, in 10 ms ticks,
/// starting on server `k % n`. An event is sent until it gets a 202: after
/// a connection error or a 5xx, the same body (same id) goes to the next
/// server that is up; after 30 s it counts as never acknowledged.
pub(super) async fn producer(
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
pub(super) async fn client(
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
pub(super) async fn poller(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
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
pub(super) async fn reloader(every: Duration, shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
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
