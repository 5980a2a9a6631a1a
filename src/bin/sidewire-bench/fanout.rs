//! `sidewire-bench fanout`: many dashboards, a steady ingest rate, and the
//! delivery latency and order each dashboard saw.

use super::*;

struct ClientResult {
    hist: Histogram<u64>,
    received: u64,
    out_of_order: u64,
    close_code: Option<u16>,
    seqs_first_last: Option<(u64, u64)>,
}

/// What a fan-out run offers: dashboards, events per second, for how long,
/// and events per ingest request (0: whatever is due every 10 ms).
pub(super) struct Load {
    pub clients: usize,
    pub rate: u64,
    pub duration: Duration,
    pub per_request: u64,
}

pub(super) async fn fanout(
    addrs: &[SocketAddr],
    token: Option<String>,
    load: Load,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    let Load { clients, rate, duration, per_request } = load;
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
    // CPU while events flow (from the first request to the end of the
    // drain): the server's, when its PID is given, and this tool's own.
    let server_pid = server_pid.map(|p| p.to_string());
    let (server_cpu_start, own_cpu_start) = (server_pid.as_deref().and_then(cpu_secs), cpu_secs("self"));
    let cpu_since = Instant::now();
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
    let cpu_wall = cpu_since.elapsed().as_secs_f64();
    let server_cpu = server_pid.as_deref().and_then(cpu_secs).zip(server_cpu_start).map(|(end, start)| end - start);
    let own_cpu = cpu_secs("self").zip(own_cpu_start).map(|(end, start)| end - start);
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
    // Server CPU per delivered message, in µs: issue 22's moonshot asks <= 2.
    let per_message_us = server_cpu.filter(|_| received > 0).map(|c| c * 1e6 / received as f64);
    let cores = |c: Option<f64>| c.map_or("n/a".to_string(), |c| format!("{:.2}", c / cpu_wall));
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
            (
                "CPU while events flow",
                format!("server {} cores, this tool {} cores", cores(server_cpu), cores(own_cpu)),
            ),
            (
                "server CPU per message",
                per_message_us.map_or("n/a (pass --server-pid)".to_string(), |us| format!("{us:.2} µs")),
            ),
        ],
        json!({"clients": clients, "connected": connected, "rate": rate, "per_request": per_request, "seconds": secs, "sent": sent,
               "delivered": received, "delivered_per_sec": received as f64 / secs, "latency": summary(&h),
               "lost": lost, "out_of_order": ooo, "closed": closes,
               "server_cpu_secs": server_cpu, "tool_cpu_secs": own_cpu, "cpu_wall_secs": cpu_wall,
               "server_cpu_per_message_us": per_message_us}),
    );
    Ok(())
}
