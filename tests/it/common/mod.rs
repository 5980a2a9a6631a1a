//! Test harness: real servers on ephemeral loopback ports, driven over real
//! HTTP and WebSocket.
#![allow(dead_code)]

use sidewire::config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// An in-process server. Dropping it does not stop it: call `stop()`.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    /// The separate metrics listener, when `metrics.listen` is set (port 0
    /// is fine: this is the port it got).
    pub metrics_addr: Option<SocketAddr>,
    pub app: std::sync::Arc<sidewire::app::App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A config on loopback port 0 with SQLite in `dir`.
pub fn config_in(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.persist.sqlite_path = dir.join("sidewire.db");
    c.persist.jsonl_path = dir.join("events.jsonl");
    c.stats.interval_secs = 1;
    c
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        Self::start_with(sidewire::ServerBuilder::new(config)).await
    }

    pub async fn start_with(builder: sidewire::ServerBuilder) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let running = builder.start().await.expect("server starts");
        let app = running.app.clone();
        let metrics_addr = running.metrics_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            running
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
        });
        TestServer { addr, base: format!("http://{addr}"), metrics_addr, app, stop: Some(tx), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// Graceful shutdown; waits until the store is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task).await.expect("server stops in time").unwrap();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

/// POSTs a JSON body to /api/v1/ingest: (status, parsed body).
pub async fn ingest(c: &reqwest::Client, base: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = c
        .post(format!("{base}/api/v1/ingest"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

pub async fn get_json(c: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// The real `sidewire` binary, as a child process.
pub struct Process {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
}

/// A loopback port where nothing listens, reserved for as long as the
/// returned socket lives (bound, never listening: connections are refused,
/// and no other test can take the port meanwhile).
pub fn refused_port() -> (u16, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap().port(), socket)
}

/// The address in a server log's `sidewire listening` line (pretty or JSON
/// format): servers started on port 0 say there which port they got.
pub fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines().filter(|l| l.contains("sidewire listening")).find_map(|l| {
        let (_, rest) = l.split_once(" addr=").or_else(|| l.split_once("\"addr\":\""))?;
        rest.split([' ', '"']).next()?.parse().ok()
    })
}

/// Waits (up to 30 s) until the log of a `sidewire serve` child at `log`
/// says where it listens; fails the test with the log if it exits first.
pub fn wait_listening(child: &mut Child, log: &Path, what: &str) -> SocketAddr {
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(addr) = listening_addr(&read()) {
            return addr;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before listening; log:\n{}", read());
        }
        assert!(Instant::now() < deadline, "{what} did not come up; log:\n{}", read());
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Process {
    /// Starts `sidewire serve --config <dir>/sidewire.toml` (on port 0) with
    /// `extra` TOML appended, and waits until its log says where it listens.
    pub fn start(dir: &Path, extra: &str) -> Process {
        let cfg = dir.join("sidewire.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[persist]\nsqlite_path = {:?}\njsonl_path = {:?}\n{extra}\n",
            dir.join("sidewire.db").display().to_string(),
            dir.join("events.jsonl").display().to_string(),
        );
        std::fs::write(&cfg, text).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sidewire"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .current_dir(dir)
            .env_remove("SIDEWIRE_CONFIG")
            // The `sidewire listening` line (INFO) tells the port.
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sidewire");
        let mut p = Process { child, base: String::new(), dir: dir.to_path_buf() };
        let addr = p.wait_listening();
        p.base = format!("http://{addr}");
        p
    }

    /// Waits for the `sidewire listening` log line (written once the
    /// listener is bound, just before it accepts).
    fn wait_listening(&mut self) -> SocketAddr {
        wait_listening(&mut self.child, &self.dir.join("server.log"), "sidewire")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Helpers for the REST/core tests (kept apart so WebSocket helpers can grow here).
pub mod api;
pub mod services;
#[allow(unused_imports)] // tests/otlp.rs, its own binary, uses none of them
pub use api::*;
pub mod cdp;
pub mod external;
pub mod rawws;
pub mod yaml;
