//! A small Chrome DevTools Protocol client over tokio-tungstenite: enough to
//! start a headless Chromium, open a page, evaluate JavaScript and take a
//! screenshot. Chromium runs in its own process group, killed on drop.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long one CDP command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// The DevTools connection of a browser.
pub struct Cdp {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    /// Every event received (method, params, sessionId), in order.
    events: Arc<Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Cdp {
    pub async fn connect(ws_url: &str) -> Cdp {
        let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        cfg.max_message_size = Some(256 << 20);
        cfg.max_frame_size = Some(256 << 20);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(ws_url, Some(cfg), false)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to DevTools at {ws_url}: {e}"));
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (p, ev) = (pending.clone(), events.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let r = match v.get("error") {
                            Some(e) => Err(e.clone()),
                            None => Ok(v["result"].clone()),
                        };
                        let _ = tx.send(r);
                    }
                } else if v.get("method").is_some() {
                    ev.lock().unwrap().push(v);
                }
            }
            // Connection gone: fail whatever still waits.
            p.lock().unwrap().clear();
        });
        Cdp { out, pending, next_id: AtomicU64::new(1), events, reader, writer }
    }

    /// Sends a command (to a session when given) and waits for its result.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out.send(Message::text(msg.to_string())).map_err(|_| json!("DevTools connection closed"))?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(json!(format!("{method}: DevTools connection closed"))),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(json!(format!("{method}: no answer in {CALL_TIMEOUT:?}")))
            }
        }
    }

    /// Events received so far for `session` whose method is `method`.
    pub fn events(&self, session: &str, method: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["sessionId"] == session && e["method"] == method)
            .map(|e| e["params"].clone())
            .collect()
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A headless Chromium child process and its DevTools connection.
pub struct Browser {
    child: Child,
    pub cdp: Arc<Cdp>,
    stderr: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `program` headless on a fresh profile, with DevTools on a port
    /// it picks itself, and connects to it.
    pub async fn launch(program: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(program);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--mute-audio",
            "--hide-scrollbars",
            "--password-store=basic",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0); // its helpers too: killed as a group on drop
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));

        // Its stderr: the DevTools URL, then kept (drained) for diagnostics.
        let stderr = child.stderr.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (url_tx, url_rx) = std::sync::mpsc::channel::<String>();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("DevTools listening on ") {
                    let _ = url_tx.send(line[i + "DevTools listening on ".len()..].trim().to_string());
                }
                l.lock().unwrap().push(line);
            }
        });
        let ws_url = tokio::task::spawn_blocking(move || url_rx.recv_timeout(Duration::from_secs(30))).await.unwrap();
        let ws_url = match ws_url {
            Ok(u) => u,
            Err(_) => {
                let status = child.try_wait();
                let _ = kill_group(&mut child);
                panic!(
                    "{} printed no DevTools URL in 30 s (status {status:?}); stderr:\n{}",
                    program.display(),
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        assert!(ws_url.starts_with("ws://127.0.0.1:"), "DevTools not on loopback: {ws_url}");
        let cdp = Arc::new(Cdp::connect(&ws_url).await);
        Browser { child, cdp, stderr: lines, _profile: profile }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// A new tab, attached (flat session), with Page and Runtime enabled.
    pub async fn new_page(&self) -> Page {
        let t = self.cdp.call(None, "Target.createTarget", json!({"url": "about:blank"})).await.expect("createTarget");
        let target_id = t["targetId"].as_str().unwrap().to_string();
        let a = self
            .cdp
            .call(None, "Target.attachToTarget", json!({"targetId": target_id, "flatten": true}))
            .await
            .expect("attachToTarget");
        let session = a["sessionId"].as_str().unwrap().to_string();
        let page = Page { cdp: self.cdp.clone(), session, target_id };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = kill_group(&mut self.child);
    }
}

/// Kills the process group led by `child` (Chromium and its helpers) and
/// reaps the leader.
fn kill_group(child: &mut Child) -> std::io::Result<()> {
    let pgid = child.id();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    child.wait().map(|_| ())
}

/// One attached tab.
pub struct Page {
    cdp: Arc<Cdp>,
    pub session: String,
    pub target_id: String,
}

impl Page {
    /// A command on this page's session; panics on a protocol error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params).await.unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Navigates and waits until the document has loaded.
    pub async fn goto(&self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
        self.wait_for(
            &format!("location.href === {} && document.readyState === 'complete'", json!(url)),
            Duration::from_secs(15),
            "page load",
        )
        .await;
    }

    /// Evaluates `expr` (awaiting a promise) and returns its value as JSON;
    /// Err with the exception text when it throws.
    pub async fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let r = self
            .cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(ex["exception"]["description"].as_str().map(str::to_string).unwrap_or_else(|| ex.to_string()));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    pub async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr).await.unwrap_or_else(|e| panic!("evaluating {expr}: {e}"))
    }

    /// Polls `expr` until it is truthy; returns its last value. Panics after
    /// `timeout` with `what` and the last value or error.
    pub async fn wait_for(&self, expr: &str, timeout: Duration, what: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_eval(expr).await;
            if let Ok(v) = &last {
                let truthy = match v {
                    Value::Null => false,
                    Value::Bool(b) => *b,
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    return v.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what} ({expr}); last: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Emulates a screen of `width` x `height` CSS pixels.
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// Saves a PNG screenshot of the whole page (beyond the viewport too).
    pub async fn screenshot(&self, path: &Path) -> PathBuf {
        let r = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
        path.to_path_buf()
    }

    /// Uncaught exceptions the page has thrown so far (their descriptions).
    pub fn exceptions(&self) -> Vec<String> {
        self.cdp
            .events(&self.session, "Runtime.exceptionThrown")
            .iter()
            .map(|p| {
                let d = &p["exceptionDetails"];
                d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("?").to_string()
            })
            .collect()
    }
}

/// Standard base64 (with padding), as CDP sends binary data.
pub fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= if c == b'=' { 0 } else { val(c) } << (18 - 6 * i);
        }
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    out
}
