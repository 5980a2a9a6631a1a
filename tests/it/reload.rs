//! Config hot reload (contract section 7): a real server and a real
//! reloader on a temp config file, changed the ways people and platforms
//! change it (in place, rename over, Kubernetes ConfigMap symlink swap,
//! SIGHUP to the real binary).

use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sidewire::config::{Config, LiveConfig};
use sidewire::reload::{ReloadTask, Reloader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The contract's limit from write to effect.
const WITHIN: Duration = Duration::from_secs(2);

/// A server following a config file, with its reloader.
struct Reloading {
    srv: TestServer,
    _reloader: ReloadTask,
}

/// The base config text for a server in `dir`, with `extra` appended.
fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[persist]\nplugin = \"sqlite\"\nsqlite_path = {:?}\n{extra}\n",
        dir.join("data").join("sidewire.db").display().to_string()
    )
}

/// Starts a server from the file at `path` and a reloader watching it.
async fn start_reloading(path: &Path) -> Reloading {
    let text = std::fs::read_to_string(path).unwrap();
    let config = Config::from_toml(&text, &[]).expect("valid test config");
    let (tx, rx) = tokio::sync::watch::channel(LiveConfig::new(config.clone()));
    let srv = TestServer::start_with(sidewire::ServerBuilder::new(config).config_channel(rx)).await;
    // SIGHUP stays with the real binary's test: one process, many servers here.
    let reloader = Reloader::new(path, Vec::new(), tx, srv.app.metrics.clone()).sighup(false).spawn();
    Reloading { srv, _reloader: reloader }
}

fn live(srv: &TestServer) -> Config {
    srv.app.config.borrow().config.clone()
}

/// Waits until `check` holds for the config in force; returns how long it took.
async fn until_config(srv: &TestServer, since: Instant, what: &str, check: impl Fn(&Config) -> bool) -> Duration {
    let deadline = since + WITHIN + Duration::from_secs(3);
    loop {
        if check(&live(srv)) {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "{what}: not in force after {:?}", since.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Value of `sidewire_config_reloads_total{result=...}` from GET /metrics.
async fn reloads(srv: &TestServer, result: &str) -> u64 {
    let text = client().get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let prefix = format!("sidewire_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Writes `text` to a temp file in the same folder and renames it over `path`
/// (what most editors and config tools do).
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn ingest_with(base: &str, token: Option<&str>, body: &Value) -> u16 {
    let mut req = client()
        .post(format!("{base}/api/v1/ingest"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message of `kind` (others are skipped).
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} message in time"))
            .expect("socket open")
            .expect("socket ok");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn a_valid_change_applies_within_two_seconds_without_dropping_a_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidewire.toml");
    std::fs::write(&path, config_text(dir.path(), "[stats]\ninterval_secs = 5\n")).unwrap();
    let r = start_reloading(&path).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(r.srv.ws_url("/api/v1/ws/dashboard")).await.unwrap();
    let ack = next_of(&mut ws, "connection_ack").await;
    assert_eq!(ack["data"]["statsIntervalSecs"], 5);
    assert_eq!(ingest_with(&r.srv.base, None, &json!({"type": "before"})).await, 202);
    assert!(next_of(&mut ws, "before").await["seq"].as_u64().is_some());

    let written = Instant::now();
    std::fs::write(
        &path,
        config_text(dir.path(), "[stats]\ninterval_secs = 1\n[auth]\ningest_tokens = [\"t-reloaded\"]\n"),
    )
    .unwrap();
    let took = until_config(&r.srv, written, "stats.interval_secs = 1", |c| c.stats.interval_secs == 1).await;
    assert!(took < WITHIN, "reload took {took:?}");
    assert_eq!(live(&r.srv).auth.ingest_tokens, vec!["t-reloaded".to_string()]);
    assert_eq!(reloads(&r.srv, "success").await, 1);

    // The new token is enforced; the old open ingest is not.
    assert_eq!(ingest_with(&r.srv.base, None, &json!({"type": "after"})).await, 401);
    assert_eq!(ingest_with(&r.srv.base, Some("t-reloaded"), &json!({"type": "after"})).await, 202);
    // The socket opened before the reload is still there and still fed.
    let ev = next_of(&mut ws, "after").await;
    assert!(ev["seq"].as_u64().unwrap() > 1, "{ev}");
    // And the new interval drives its stats updates: two within ~1 s apart.
    let t0 = Instant::now();
    next_of(&mut ws, "stats_update").await;
    next_of(&mut ws, "stats_update").await;
    assert!(t0.elapsed() < Duration::from_millis(2500), "stats_update every 1 s, took {:?}", t0.elapsed());
    ws.send(Message::Close(None)).await.unwrap();
    r.srv.stop().await;
}

#[tokio::test]
async fn restart_only_keys_keep_their_value_and_the_rest_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidewire.toml");
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    let r = start_reloading(&path).await;
    let listen_before = live(&r.srv).server.listen;

    let written = Instant::now();
    let text = config_text(dir.path(), "[stats]\ninterval_secs = 3\n").replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&path, text).unwrap();
    let took = until_config(&r.srv, written, "stats.interval_secs = 3", |c| c.stats.interval_secs == 3).await;
    assert!(took < WITHIN, "reload took {took:?}");
    assert_eq!(live(&r.srv).server.listen, listen_before, "server.listen needs a restart");
    assert_eq!(reloads(&r.srv, "success").await, 1);
    // Still serving on the old address.
    assert_eq!(ingest_with(&r.srv.base, None, &json!({"type": "x"})).await, 202);
    r.srv.stop().await;
}

#[tokio::test]
async fn an_invalid_file_keeps_the_old_config_and_counts_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidewire.toml");
    std::fs::write(&path, config_text(dir.path(), "[stats]\ninterval_secs = 4\n")).unwrap();
    let r = start_reloading(&path).await;
    assert_eq!(reloads(&r.srv, "failure").await, 0);
    let before = live(&r.srv);

    // An unknown key and a bad value: both are errors, nothing applies.
    std::fs::write(
        &path,
        config_text(dir.path(), "[stats]\ninterval_secs = 2\nintervall = 1\n[ws]\nmax_connections = 0\n"),
    )
    .unwrap();
    let deadline = Instant::now() + WITHIN + Duration::from_secs(3);
    while reloads(&r.srv, "failure").await == 0 {
        assert!(Instant::now() < deadline, "no failure counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(live(&r.srv), before);
    assert_eq!(reloads(&r.srv, "success").await, 0);

    // Fixing the file applies it.
    let written = Instant::now();
    std::fs::write(&path, config_text(dir.path(), "[stats]\ninterval_secs = 2\n")).unwrap();
    until_config(&r.srv, written, "stats.interval_secs = 2", |c| c.stats.interval_secs == 2).await;
    assert_eq!(reloads(&r.srv, "failure").await, 1, "one failure for one bad write");
    r.srv.stop().await;
}

#[tokio::test]
async fn a_file_renamed_over_the_config_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidewire.toml");
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    let r = start_reloading(&path).await;

    for (i, origins) in ["http://a.test", "http://b.test"].iter().enumerate() {
        let written = Instant::now();
        let text = config_text(dir.path(), "").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:0\"\nallowed_origins = [\"{origins}\"]"),
        );
        rename_over(&path, &text);
        let took =
            until_config(&r.srv, written, origins, |c| c.server.allowed_origins == vec![origins.to_string()]).await;
        assert!(took < WITHIN, "rename {i} took {took:?}");
    }
    assert_eq!(reloads(&r.srv, "success").await, 2);
    r.srv.stop().await;
}

/// A Kubernetes ConfigMap volume: `sidewire.toml -> ..data/sidewire.toml`,
/// `..data -> ..<timestamp>/`; an update writes a new timestamped folder and
/// renames a fresh `..data` symlink over the old one.
#[cfg(unix)]
#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("config");
    std::fs::create_dir(&mount).unwrap();
    let write_version = |name: &str, interval: u64| -> PathBuf {
        let v = mount.join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(
            v.join("sidewire.toml"),
            config_text(dir.path(), &format!("[stats]\ninterval_secs = {interval}\n")),
        )
        .unwrap();
        v
    };
    write_version("..2026_a", 5);
    symlink("..2026_a", mount.join("..data")).unwrap();
    symlink("..data/sidewire.toml", mount.join("sidewire.toml")).unwrap();
    let path = mount.join("sidewire.toml");
    let r = start_reloading(&path).await;
    assert_eq!(live(&r.srv).stats.interval_secs, 5);

    write_version("..2026_b", 2);
    let written = Instant::now();
    symlink("..2026_b", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_a")).unwrap();
    let took = until_config(&r.srv, written, "stats.interval_secs = 2", |c| c.stats.interval_secs == 2).await;
    assert!(took < WITHIN, "symlink swap took {took:?}");
    assert_eq!(reloads(&r.srv, "success").await, 1);
    r.srv.stop().await;
}

/// This thread's log lines, for a current-thread test runtime, where the
/// reloader's task runs too (no global subscriber: other tests share the
/// process).
#[derive(Clone, Default)]
struct ThreadLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ThreadLog {
    /// Captures `sidewire::reload` down to debug until the guard drops.
    fn capture() -> (ThreadLog, tracing::subscriber::DefaultGuard) {
        let log = ThreadLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("sidewire::reload=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn unchanged_text_is_not_reloaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidewire.toml");
    let text = config_text(dir.path(), "");
    std::fs::write(&path, &text).unwrap();
    let (log, _guard) = ThreadLog::capture();
    let r = start_reloading(&path).await;
    // An unrelated file in the folder, then the same bytes rewritten: the
    // reloader sees the rewrite (it says so) and neither applies nor counts it.
    std::fs::write(dir.path().join("other.toml"), "x = 1").unwrap();
    std::fs::write(&path, &text).unwrap();
    wait_until("the reloader saw the rewrite", WITHIN + Duration::from_secs(3), || {
        let seen = log.text().contains("text unchanged");
        async move { seen }
    })
    .await;
    assert_eq!(reloads(&r.srv, "success").await, 0);
    assert_eq!(reloads(&r.srv, "failure").await, 0);
    // A real change after them is the one reload counted.
    let written = Instant::now();
    std::fs::write(&path, config_text(dir.path(), "[stats]\ninterval_secs = 3\n")).unwrap();
    until_config(&r.srv, written, "stats.interval_secs = 3", |c| c.stats.interval_secs == 3).await;
    assert_eq!(reloads(&r.srv, "success").await, 1);
    r.srv.stop().await;
}

#[cfg(unix)]
#[test]
fn sighup_reloads_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(dir.path(), "[stats]\ninterval_secs = 5\n");
    let metrics = |p: &Process| -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { client().get(format!("{}/metrics", p.base)).send().await.unwrap().text().await.unwrap() })
    };
    let success = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("sidewire_config_reloads_total{result=\"success\"} "))
            .expect("reload counter")
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(success(&metrics(&p)), 0);
    let hup = || {
        let st = std::process::Command::new("kill").arg("-HUP").arg(p.child.id().to_string()).status().unwrap();
        assert!(st.success());
    };
    // Unchanged text: the watcher has nothing to do; only SIGHUP reloads it
    // (a file event with the same text is skipped and not counted).
    hup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while success(&metrics(&p)) < 1 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload; log:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The process survived the signal (its default action is to exit).
    let st = p.terminate();
    assert!(st.success(), "exit status {st:?}");
}

/// `GET /api/v1/stats` while the config is replaced over and over (a
/// reload loop at its worst). The handler once held its borrow of the
/// config through a `match` and borrowed again inside it: a recursive read
/// of the watch's lock that, with a reload waiting to write, hung both the
/// handler's and the reload's worker threads, so the whole server stopped
/// (the CI soak saw it: SIGHUPs every 3 s, stats polled every second).
/// Every request here must be answered within 5 s. On a hang the runtime is
/// leaked rather than dropped: dropping it would wait for the stuck worker.
#[test]
fn stats_polled_during_constant_reloads_never_hang() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let (tx, rx) = tokio::sync::watch::channel(LiveConfig::new(config.clone()));
    let srv = rt.block_on(TestServer::start_with(sidewire::ServerBuilder::new(config.clone()).config_channel(rx)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tx.send_replace(LiveConfig::new(config.clone()));
                n += 1;
            }
            n
        })
    };
    // Polled from plain threads with their own client: a hung server
    // runtime cannot stop them from noticing.
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/api/v1/stats", srv.base);
            std::thread::spawn(move || -> Result<u64, String> {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                let until = Instant::now() + Duration::from_secs(3);
                let mut answered = 0u64;
                while Instant::now() < until {
                    match client.get(&url).send() {
                        Ok(res) if res.status() == 200 => answered += 1,
                        Ok(res) => return Err(format!("GET /api/v1/stats: {}", res.status())),
                        Err(e) if e.is_timeout() => {
                            return Err(format!("GET /api/v1/stats hung (no answer in 5 s) after {answered} answers"))
                        }
                        Err(e) => return Err(format!("GET /api/v1/stats after {answered} answers: {e}")),
                    }
                }
                Ok(answered)
            })
        })
        .collect();
    let polled = pollers.into_iter().try_fold(0, |sum, p| p.join().unwrap().map(|n| sum + n));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = match polled {
        Ok(n) => n,
        Err(e) => {
            std::mem::forget(srv);
            std::mem::forget(rt);
            panic!("{e}");
        }
    };
    let reloads = writer.join().unwrap();
    assert!(answered > 100 && reloads > 100, "{answered} polls, {reloads} config swaps");
    rt.block_on(srv.stop());
}
