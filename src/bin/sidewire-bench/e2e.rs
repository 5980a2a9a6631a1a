//! `sidewire-bench e2e`: one event at a time, from ingest to a dashboard.

use super::*;

pub(super) async fn e2e(
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
