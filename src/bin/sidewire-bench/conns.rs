//! `sidewire-bench conns`: many idle dashboards, and the server's memory per
//! connection.

use super::*;

pub(super) async fn conns(
    addr: SocketAddr,
    clients: usize,
    server_pid: Option<u32>,
    hold: Duration,
) -> anyhow::Result<()> {
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
