//! Smoke test of the load generator (issue 6): every `sidewire-bench`
//! subcommand runs at tiny sizes against the real `sidewire` binary, exits 0
//! and prints a `RESULT {json}` line that says the run did what it claims.
//! A few seconds in all; no `cargo bench` needed.

use crate::common::Process;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Raised per-IP WebSocket limits: every bench client comes from 127.0.0.1.
const WS_LIMITS: &str = "[ws]\nmax_connections_per_ip = 100000\nconnect_rate_per_ip_per_min = 1000000\n";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `sidewire-bench <args>`, killing it if it outlives `limit`.
fn bench(args: &[&str], limit: Duration) -> Run {
    let out_dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (out_dir.path().join("stdout"), out_dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidewire-bench"))
        .args(args)
        .env_remove("SIDEWIRE_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn sidewire-bench");
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let ctx = format!(
                "sidewire-bench {args:?} ran longer than {limit:?}; stdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
            LAST_RUN.with(|l| *l.borrow_mut() = ctx.clone());
            panic!("{ctx}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        elapsed: started.elapsed(),
    }
}

/// Runs a subcommand against `server`; asserts exit 0 and one RESULT line of
/// the right `bench` kind, and returns its JSON.
fn result(server: &Process, kind: &str, args: &[&str], limit: Duration) -> Value {
    let mut all = vec!["--url", server.base.as_str(), kind];
    all.extend_from_slice(args);
    let run = bench(&all, limit);
    let ctx = || format!("sidewire-bench {all:?}\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    // Told again after the server's log when the test fails: CI shows the
    // end of a failure's output, and the verdict is what explains it.
    LAST_RUN.with(|l| *l.borrow_mut() = ctx());
    assert_eq!(run.code, Some(0), "exit code; {}", ctx());
    let lines: Vec<&str> = run.stdout.lines().filter_map(|l| l.strip_prefix("RESULT ")).collect();
    assert_eq!(lines.len(), 1, "exactly one RESULT line; {}", ctx());
    let v: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("RESULT is not JSON ({e}); {}", ctx()));
    assert_eq!(v["bench"], kind, "{}", ctx());
    assert!(v["cores"].as_u64().unwrap_or(0) >= 1, "{}", ctx());
    assert!(run.stdout.contains(&format!("== sidewire-bench {kind}")), "human summary; {}", ctx());
    v
}

/// A real server; prints its log if the test fails.
struct Server {
    p: Process,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Server {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.p
    }
}

thread_local! {
    /// The last `sidewire-bench` run of this test thread, as `result` saw it.
    static LAST_RUN: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server log ({}):\n{}", self.p.base, self.p.log());
            LAST_RUN.with(|l| eprintln!("the last run, again:\n{}", l.borrow()));
        }
    }
}

/// A real server, once its own log says it is listening on its own port
/// (not merely that something accepts connections there).
fn server() -> Server {
    for _attempt in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Process::start(dir.path(), WS_LIMITS);
        let addr = p.base.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if p.log().lines().any(|l| l.contains("sidewire listening") && l.contains(&addr)) {
                return Server { p, _dir: dir };
            }
            if p.child.try_wait().unwrap().is_some() {
                eprintln!("server on {addr} exited before listening (port taken?); retrying:\n{}", p.log());
                break;
            }
            assert!(Instant::now() < deadline, "server on {addr} never logged `sidewire listening`:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("no server came up in 3 attempts");
}

fn latency_ok(v: &Value, what: &str) {
    let l = &v["latency"];
    for k in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
        assert!(l[k].as_f64().is_some_and(|x| x > 0.0), "{what}: latency.{k} in {v}");
    }
    assert!(
        l["p50_ms"].as_f64() <= l["p99_ms"].as_f64() && l["p99_ms"].as_f64() <= l["max_ms"].as_f64(),
        "{what}: {v}"
    );
}

#[test]
fn ingest_runs_and_reports_throughput() {
    let s = server();
    let v = result(&s, "ingest", &["--concurrency", "2", "--batch", "5", "--duration", "1"], Duration::from_secs(20));
    assert_eq!(v["concurrency"], 2, "{v}");
    assert_eq!(v["batch"], 5, "{v}");
    assert_eq!(v["ids"], "unique", "realistic events carry unique ids by default: {v}");
    assert!(v["requests_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["events_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["non_202"], serde_json::json!({}), "every request got a 202: {v}");
    assert!(v["latency"]["count"].as_u64().unwrap() > 0, "{v}");
    latency_ok(&v, "ingest");
}

/// `--ids repeat` resends one batch: everything after the first request is a
/// duplicate, still answered 202.
#[test]
fn ingest_repeat_ids_are_duplicates() {
    let s = server();
    let v = result(
        &s,
        "ingest",
        &["--concurrency", "1", "--batch", "3", "--duration", "1", "--ids", "repeat"],
        Duration::from_secs(20),
    );
    assert_eq!(v["ids"], "repeat", "{v}");
    assert_eq!(v["non_202"], serde_json::json!({}), "{v}");
    let text = reqwest::blocking::get(format!("{}/api/v1/stats", s.base)).unwrap().text().unwrap();
    let stats: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stats["eventsTotal"], 3, "one batch stored once: {stats}");
}

/// The CI-sized soak (issue 10): 30 s of steady ingest with 100 dashboards
/// that drop and resume every few seconds, SIGHUP reloads and a poller. The
/// tool itself fails on a lost, doubled or reordered event, a non-202, a
/// failed poll, connection books that do not balance, or growth.
#[test]
fn soak_30s_loses_nothing_and_balances_its_books() {
    let s = server();
    let pid = s.child.id().to_string();
    let args = [
        "--minutes",
        "0.5",
        "--period-secs",
        "10",
        "--clients",
        "100",
        "--lifetime-secs",
        "3",
        "--rate",
        "100",
        "--reload-every-secs",
        "3",
        "--server-pid",
        &pid,
    ];
    let v = result(&s, "soak", &args, Duration::from_secs(90));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["periods"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(v["reconnects"].as_u64().unwrap() > 100, "clients churned: {v}");
    assert!(v["delivered"].as_u64().unwrap() > 100 * 100, "{v}");
    assert!(
        s.log().contains("config reloaded") || s.log().contains("reload"),
        "SIGHUP reached the server:\n{}",
        s.log()
    );
}

#[test]
fn fanout_delivers_everything_in_order() {
    let s = server();
    let pid = s.child.id().to_string();
    let args = ["--clients", "5", "--rate", "20", "--duration", "1", "--server-pid", &pid];
    let v = result(&s, "fanout", &args, Duration::from_secs(30));
    assert_eq!(v["connected"], 5, "{v}");
    assert_eq!(v["sent"], 20, "{v}");
    assert_eq!(v["delivered"], 100, "5 clients × 20 events: {v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["out_of_order"], 0, "{v}");
    assert_eq!(v["closed"], serde_json::json!({}), "no client was closed by the server: {v}");
    assert_eq!(v["latency"]["count"], 100, "{v}");
    latency_ok(&v, "fanout");
    // CPU read from /proc while events flowed (1 s of events, 2 s of drain).
    assert!(v["cpu_wall_secs"].as_f64().unwrap() >= 2.9, "{v}");
    for key in ["server_cpu_secs", "tool_cpu_secs", "server_cpu_per_message_us"] {
        assert!(v[key].as_f64().is_some_and(|x| x >= 0.0), "{key} read from /proc: {v}");
    }
}

#[test]
fn conns_opens_all_and_reads_server_rss() {
    let s = server();
    let pid = s.child.id().to_string();
    let v = result(&s, "conns", &["--clients", "20", "--server-pid", &pid, "--hold", "1"], Duration::from_secs(20));
    assert_eq!(v["open"], 20, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert!(v["rss_before_kib"].as_u64().unwrap() > 0, "RSS read from /proc/{pid}/status: {v}");
    assert!(v["rss_after_kib"].as_u64().unwrap() > 0, "{v}");
    assert!(v["rss_per_conn_kib"].is_number(), "{v}");
    assert!(v["open_seconds"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn e2e_measures_every_event() {
    let s = server();
    let v = result(&s, "e2e", &["--count", "20", "--gap-ms", "1"], Duration::from_secs(20));
    assert_eq!(v["count"], 20, "{v}");
    latency_ok(&v, "e2e");
}

#[test]
fn refuses_non_loopback_targets_without_connecting() {
    for url in ["http://10.1.2.3:8790", "http://0.0.0.0:8790", "http://[2001:db8::1]:8790", "http://example.com:80"] {
        for cmd in
            [&["ingest", "--duration", "1"][..], &["fanout", "--clients", "1"], &["conns", "--clients", "1"], &["e2e"]]
        {
            let mut args = vec!["--url", url];
            args.extend_from_slice(cmd);
            let run = bench(&args, Duration::from_secs(10));
            let ctx = format!("sidewire-bench {args:?}\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
            assert_ne!(run.code, Some(0), "must refuse; {ctx}");
            assert!(!run.stdout.contains("RESULT"), "{ctx}");
            assert!(run.stderr.contains("loopback") || run.stderr.contains("IP:port"), "says why; {ctx}");
            // Refused before any connection attempt: a connect to an unroutable
            // address would take seconds to time out.
            assert!(run.elapsed < Duration::from_secs(3), "took {:?}; {ctx}", run.elapsed);
        }
    }
}
