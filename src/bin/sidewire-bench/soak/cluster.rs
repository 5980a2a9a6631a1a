//! Cluster mode: the replicas the soak starts, kills and restarts itself,
//! and the Redis proxy it cuts.

use super::*;

/// The replicas the soak starts, kills and restarts itself.
pub(super) struct Replicas {
    pub(super) cmd: String,
    pub(super) log_dir: std::path::PathBuf,
    pub(super) children: Mutex<Vec<Option<std::process::Child>>>,
}

impl Replicas {
    pub(super) fn spawn(&self, i: usize) -> anyhow::Result<u32> {
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

    pub(super) fn kill9(&self, i: usize) {
        if let Some(mut c) = self.children.lock()[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to every replica, then up to 15 s for them to leave.
    pub(super) async fn stop_all(&self) {
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

/// The replica that commits the cluster's groups now, if one says so.
async fn writer_of(shared: &Shared) -> Option<usize> {
    for (i, s) in shared.servers.iter().enumerate() {
        let text = async {
            let mut c = http_conn(s.addr).await?;
            let req =
                http::Request::get("/metrics").header(http::header::HOST, s.addr.to_string()).body(Full::default())?;
            let res = tokio::time::timeout(Duration::from_secs(2), c.send_request(req)).await??;
            anyhow::Ok(String::from_utf8(res.into_body().collect().await?.to_bytes().to_vec())?)
        }
        .await;
        if text.is_ok_and(|t| t.lines().any(|l| l.trim() == "sidewire_cluster_writer 1")) {
            return Some(i);
        }
    }
    None
}

/// Waits until `/readyz` answers 200 (60 s at most).
pub(super) async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
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

/// Every `every`: SIGKILL one replica, start it again with the same command,
/// wait until it is ready. Every other kill takes the cluster's writer (the
/// replica whose `sidewire_cluster_writer` is 1: the others' groups are in
/// flight through it); the rest go round robin over 2..N (replica 1 when
/// alone).
pub(super) async fn killer(
    replicas: Arc<Replicas>,
    every: Duration,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let n = shared.servers.len();
    // Half an interval late: kills fall between the reporter's samples, so
    // RSS and fds are never read in the middle of the mass reconnect a kill
    // causes (with both every minute, each sample caught ~100 dashboards
    // arriving on a survivor, read as fd growth).
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every + every / 2, every);
    for round in 0usize.. {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        let writer = if round % 2 == 1 { writer_of(&shared).await } else { None };
        let i = match writer {
            Some(w) => w,
            None if n == 1 => 0,
            None => 1 + (round / 2) % (n - 1),
        };
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
        let what = if writer.is_some() { " (the cluster's writer)" } else { "" };
        println!("  (kill -9 replica {}{what} and restart: ready again in {:.2} s)", i + 1, t0.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Every `every`: cut the Redis proxy for `cut_for`.
pub(super) async fn cutter(
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
pub(super) async fn proxy(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
    cut: Arc<tokio::sync::watch::Sender<bool>>,
) {
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
