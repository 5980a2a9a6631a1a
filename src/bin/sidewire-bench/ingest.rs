//! `sidewire-bench ingest`: concurrent keep-alive ingest at full speed.

use super::*;

/// What each ingest request carries.
#[derive(Clone, Copy)]
pub(super) struct IngestShape {
    pub(super) batch: usize,
    pub(super) payload: usize,
    pub(super) ids: Ids,
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

pub(super) async fn ingest(
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
