//! The monitoring kit (issue 5) against the metrics the binary really
//! exports:
//!
//! - `promtool check config` / `check rules` on `prometheus/`;
//! - every metric name the Grafana dashboards and the alert rules use is one
//!   a running server exports (no outside program needed);
//! - a real Prometheus scrapes an in-process sidewire under generated
//!   traffic, and every PromQL expression of the dashboards and the alert
//!   rules is evaluated through its HTTP API: none may error or come back
//!   empty.
//!
//! Prometheus/promtool are outside programs: see `common/external.rs` for
//! when a missing one skips and when it fails (`SIDEWIRE_TEST_REQUIRE`).

use crate::common::external;
use crate::common::yaml;
use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const HINT: &str = "install Debian's `prometheus` package (it ships promtool too)";

// ------------------------------------------------- expressions of the kit

/// One PromQL expression found in the kit.
#[derive(Debug, Clone)]
struct Found {
    /// Where it comes from, e.g. `sidewire.json: panel "Active connections" A`.
    origin: String,
    expr: String,
}

/// Every `targets[].expr` of every dashboard under `grafana/dashboards`,
/// wherever the panel sits (rows, nested panels, library panels inlined).
fn dashboard_exprs() -> Vec<Found> {
    let mut out = Vec::new();
    let dir = root().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboard in {}", dir.display());
    for f in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        walk_targets(&d, &name, "", &mut out);
    }
    out
}

fn walk_targets(v: &Value, file: &str, title: &str, out: &mut Vec<Found>) {
    match v {
        Value::Object(o) => {
            let title = o.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(Value::Array(targets)) = o.get("targets") {
                for t in targets {
                    if let Some(expr) = t.get("expr").and_then(Value::as_str) {
                        let r = t.get("refId").and_then(Value::as_str).unwrap_or("?");
                        out.push(Found { origin: format!("{file}: panel {title:?} {r}"), expr: expr.to_string() });
                    }
                }
            }
            for (k, child) in o {
                if k != "targets" {
                    walk_targets(child, file, title, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk_targets(x, file, title, out)),
        _ => {}
    }
}

/// The dashboards' template variables: (name, query).
fn dashboard_variables() -> Vec<(String, String)> {
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("grafana/dashboards/sidewire.json")).unwrap())
            .unwrap();
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let q = v["query"]
                .get("query")
                .or(Some(&v["query"]))
                .and_then(Value::as_str)
                .or(v["definition"].as_str())
                .unwrap_or_default();
            (v["name"].as_str().unwrap().to_string(), q.to_string())
        })
        .collect()
}

/// Every rule `expr` of `prometheus/alerts.yml` (alerting and recording).
fn alert_exprs() -> Vec<Found> {
    let rules = yaml::load(&root().join("prometheus/alerts.yml"));
    let mut out = Vec::new();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).expect("a rule has alert or record");
            out.push(Found {
                origin: format!("alerts.yml: {name}"),
                expr: r["expr"].as_str().expect("rule expr").trim().to_string(),
            });
        }
    }
    assert!(!out.is_empty(), "no rule in alerts.yml");
    out
}

/// Grafana's formatting of a multi-value variable inside a regex matcher
/// (`=~"$instance"`): `(a|b)`, each value regex-escaped; as PromQL string
/// text, so a backslash is written twice.
fn grafana_regex(values: &[String]) -> String {
    let esc: Vec<String> = values
        .iter()
        .map(|v| {
            let mut s = String::new();
            for c in v.chars() {
                if r"\.+*?()|[]{}^$".contains(c) {
                    s.push_str("\\\\");
                }
                s.push(c);
            }
            s
        })
        .collect();
    format!("({})", esc.join("|"))
}

/// Replaces Grafana's variables with concrete values: template variables
/// (`$x`, `${x}`, `${x:regex}`, `[[x]]`) by `vars`, and the built-in
/// intervals by what Grafana would pick for the default time range.
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut s = expr.to_string();
    for (name, value) in vars {
        for pat in
            [format!("${{{name}:regex}}"), format!("${{{name}:pipe}}"), format!("${{{name}}}"), format!("[[{name}]]")]
        {
            s = s.replace(&pat, value);
        }
        // `$name` not followed by another identifier character.
        let pat = format!("${name}");
        let mut outp = String::new();
        let mut rest = s.as_str();
        while let Some(i) = rest.find(&pat) {
            let after = &rest[i + pat.len()..];
            outp.push_str(&rest[..i]);
            if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                outp.push_str(&pat);
            } else {
                outp.push_str(value);
            }
            rest = after;
        }
        outp.push_str(rest);
        s = outp;
    }
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval_ms", "15000"),
        ("$__interval", "15s"),
        ("$__range_s", "300"),
        ("$__range_ms", "300000"),
        ("$__range", "5m"),
    ] {
        s = s.replace(&format!("${{{}}}", &var[1..]), value);
        s = s.replace(var, value);
    }
    s
}

/// Splits an alert expression at its top-level comparison against a number
/// (`LHS > 0.05`): (lhs, op, rhs). Strings, label matchers (`{...}`), range
/// selectors (`[...]`) and parentheses are skipped, so `=~`/`!=` inside
/// matchers do not count; the last top-level comparison wins.
fn split_comparison(expr: &str) -> Option<(String, String, String)> {
    let b = expr.as_bytes();
    let (mut depth, mut quote, mut found) = (0i32, None::<u8>, None);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => quote = Some(c),
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            b'=' | b'!' | b'>' | b'<' if depth == 0 => {
                let two = b.get(i + 1) == Some(&b'=');
                let op_len = if two { 2 } else { 1 };
                let op = &expr[i..i + op_len];
                if matches!(op, "==" | "!=" | ">=" | "<=" | ">" | "<") {
                    found = Some((i, op_len));
                }
                i += op_len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let (at, len) = found?;
    let rhs = expr[at + len..].trim();
    rhs.parse::<f64>().ok()?;
    Some((expr[..at].trim().to_string(), expr[at..at + len].to_string(), rhs.to_string()))
}

#[test]
fn comparison_splitter() {
    assert_eq!(
        split_comparison(r#"up{job="sidewire"} == 0"#),
        Some((r#"up{job="sidewire"}"#.into(), "==".into(), "0".into()))
    );
    let (l, op, r) =
        split_comparison("sum(rate(x{status=~\"5..\",a!=\"b\"}[5m]))\n  /\nsum(rate(x[5m]))\n  > 0.05").unwrap();
    assert_eq!((op.as_str(), r.as_str()), (">", "0.05"));
    assert!(l.ends_with("sum(rate(x[5m]))"));
    assert_eq!(split_comparison("sum(rate(x[1m]))"), None);
    assert_eq!(
        substitute(
            r#"rate(a{instance=~"$instance"}[$__rate_interval]) + b{i="${instance}"}"#,
            &[("instance".into(), "X".into())]
        ),
        r#"rate(a{instance=~"X"}[1m]) + b{i="X"}"#
    );
    assert_eq!(grafana_regex(&["127.0.0.1:9".into()]), r"(127\\.0\\.0\\.1:9)");
}

// ------------------------------------------------------------ promtool

#[test]
fn promtool_checks_the_config_and_the_rules() {
    let Some(promtool) = external::find("promtool_checks_the_config_and_the_rules", "prometheus", &["promtool"], HINT)
    else {
        return;
    };
    // prometheus.yml names alerts.yml relative to itself: run from there.
    let dir = root().join("prometheus");
    for args in [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]] {
        let out = Command::new(&promtool).args(args).current_dir(&dir).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("promtool {}:\n{text}", args.join(" "));
        assert!(out.status.success(), "promtool {} failed:\n{text}", args.join(" "));
        assert!(text.contains("SUCCESS"), "promtool {}: {text}", args.join(" "));
    }
}

// ------------------------------------------- metric names vs /metrics

/// Metric names in an expression: identifiers that start with `sidewire_`
/// or `process_`, histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in expr.chars().chain([' ']) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c == '"' || c == '\'' {
            quote = Some(c);
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            cur.push(c);
            continue;
        }
        if cur.starts_with("sidewire_") || cur.starts_with("process_") {
            out.insert(cur.clone());
        }
        cur.clear();
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_kit_uses_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    // Label values appear with use: one event, one request served before.
    let (st, _) = ingest(&c, &srv.base, &json!({"type": "ingestion_complete"})).await;
    assert_eq!(st, 202);
    c.get(srv.url("/healthz")).send().await.unwrap();
    let text = c.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    srv.stop().await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for f in dashboard_exprs().into_iter().chain(alert_exprs()) {
        for name in metric_names(&f.expr) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)).map(str::to_string))
                .unwrap_or_else(|| name.clone());
            if !exported.contains(&base) {
                missing.push(format!("{name} ({})", f.origin));
            }
            used.insert(base);
        }
    }
    println!("metrics used by the kit: {used:?}");
    assert!(missing.is_empty(), "the kit uses metrics the server does not export:\n{}", missing.join("\n"));
}

// ------------------------------------------------------ real Prometheus

/// A Prometheus child process, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Prometheus {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The bound address in Prometheus' `msg="Listening on" address=...` log line
/// (its earlier "Start listening" line repeats the flag, port 0).
fn prometheus_addr(log: &str) -> Option<std::net::SocketAddr> {
    log.lines().filter(|l| l.contains("Listening on")).find_map(|l| {
        let (_, rest) = l.split_once(" address=")?;
        let addr: std::net::SocketAddr = rest.split(' ').next()?.trim_matches('"').parse().ok()?;
        (addr.port() != 0).then_some(addr)
    })
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/api/v1/query` at the current time: Ok(result array) or Err(message).
async fn query(c: &reqwest::Client, base: &str, expr: &str) -> Result<Vec<Value>, String> {
    let q: String = form_urlencoded::Serializer::new(String::new()).append_pair("query", expr).finish();
    let r = c.get(format!("{base}/api/v1/query?{q}")).send().await.map_err(|e| format!("request failed: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.map_err(|e| format!("HTTP {status}: {e}"))?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("HTTP {status}: {e}: {}", String::from_utf8_lossy(&bytes)))?;
    if body["status"] != "success" {
        return Err(format!("HTTP {status}: {}: {}", body["errorType"], body["error"]));
    }
    if let Some(w) = body.get("warnings") {
        println!("  warnings for {expr}: {w}");
    }
    let data = &body["data"];
    Ok(match data["resultType"].as_str() {
        Some("scalar") | Some("string") => vec![json!({"value": data["result"]})],
        _ => data["result"].as_array().cloned().unwrap_or_default(),
    })
}

/// The sample value of a vector element (`NaN`, `+Inf` included).
fn sample(v: &Value) -> f64 {
    v["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

/// Runs `sidewire::demo::run` on a thread of its own (its future is not
/// `Send`: it keeps a `ThreadRng` across awaits); dropping the returned
/// sender stops it.
fn spawn_demo(base: &str, duration: Duration) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = sidewire::demo::DemoOptions { url: base.to_string(), rate: 40.0, duration: Some(duration), token: None };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            tokio::select! {
                r = sidewire::demo::run(opts) => { r.expect("demo traffic"); }
                _ = rx => {}
            }
        });
    });
    tx
}

/// Traffic of every kind the dashboards chart.
async fn ws_and_bad_traffic(srv: &TestServer) -> Vec<tokio::task::JoinHandle<()>> {
    let c = client();
    let mut held = Vec::new();
    // Three dashboards that stay connected (and drain their messages).
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(srv.ws_url("/api/v1/ws/dashboard")).await.expect("ws connects");
        let (mut tx, mut rx) = ws.split();
        held.push(tokio::spawn(async move {
            let _ = tx.send(Message::text(r#"{"type":"ping"}"#)).await;
            while let Some(Ok(_)) = rx.next().await {}
        }));
    }
    // One that sends a bad message, then closes (client_close).
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.ws_url("/ws/dashboard")).await.unwrap();
    ws.send(Message::text("this is not json")).await.unwrap();
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"pong\"") => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no pong: {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    // 4xx on ingest, 404, and the REST routes.
    let (s, _) = ingest(&c, &srv.base, &json!({"type": "Bad Type"})).await;
    assert_eq!(s, 400);
    let r = c.post(srv.url("/api/v1/ingest")).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let r = c.get(srv.url("/no/such/path")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    for p in ["/api/v1/stats", "/api/v1/activity/recent", "/healthz", "/readyz"] {
        let r = c.get(srv.url(p)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{p}");
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_prometheus_evaluates_every_dashboard_and_alert_expression() {
    const TEST: &str = "real_prometheus_evaluates_every_dashboard_and_alert_expression";
    let Some(prom_bin) = external::find(TEST, "prometheus", &["prometheus"], HINT) else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(60), prometheus_run(prom_bin))
        .await
        .expect("the whole Prometheus test takes under 60 s");
}

async fn prometheus_run(prom_bin: PathBuf) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();

    // Demo traffic for the whole test (aborted at the end), then the rest.
    let demo = spawn_demo(&srv.base, Duration::from_secs(55));
    let held = ws_and_bad_traffic(&srv).await;

    // Prometheus scraping the test server every second, with the kit's rules.
    let cfg = dir.path().join("prometheus.yml");
    let rules = root().join("prometheus/alerts.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: sidewire\n    scrape_interval: 1s\n    \
             metrics_path: /metrics\n    static_configs:\n      - targets: [\"{}\"]\n",
            srv.addr
        ),
    )
    .unwrap();
    let log = dir.path().join("prometheus.log");
    let tsdb = dir.path().join("tsdb");
    let child = Command::new(&prom_bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        // Port 0: its "Listening on" log line says which port it got.
        .arg("--web.listen-address=127.0.0.1:0")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn prometheus");
    let mut prom = Prometheus { child, base: String::new(), log };

    // Listening, ready, then a few scrapes.
    let deadline = Instant::now() + Duration::from_secs(20);
    prom.base = loop {
        if let Some(addr) = prometheus_addr(&prom.log()) {
            break format!("http://{addr}");
        }
        assert!(Instant::now() < deadline, "prometheus did not say where it listens; log:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        if let Ok(r) = c.get(format!("{}/-/ready", prom.base)).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "prometheus not ready; log:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("prometheus ready after {:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let n = query(&c, &prom.base, r#"count_over_time(up{job="sidewire"}[1m]) and on() (up{job="sidewire"} == 1)"#)
            .await
            .unwrap()
            .first()
            .map(sample)
            .unwrap_or(0.0);
        if n >= 6.0 {
            println!("{n} scrapes after {:?}", started.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "prometheus did not scrape sidewire; log:\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The checks below can fail: a typo'd metric is empty, a syntax error errs.
    assert_eq!(query(&c, &prom.base, "sidewire_no_such_metric_total").await, Ok(vec![]));
    assert!(query(&c, &prom.base, "sum(rate(sidewire_ws_connections_total[1m])").await.is_err());

    // The dashboards' $instance, resolved like Grafana does:
    // label_values(sidewire_build_info, instance), All selected.
    let mut vars = Vec::new();
    for (name, q) in dashboard_variables() {
        let (metric, label) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.split_once(','))
            .unwrap_or_else(|| panic!("variable {name}: unsupported query {q:?}"));
        let res = query(&c, &prom.base, &format!("group by ({}) ({})", label.trim(), metric.trim()))
            .await
            .unwrap_or_else(|e| panic!("variable {name}: {e}"));
        let values: Vec<String> =
            res.iter().filter_map(|s| s["metric"][label.trim()].as_str().map(str::to_string)).collect();
        assert!(
            values.contains(&srv.addr.to_string()),
            "variable {name} = {values:?} lacks the scraped instance {}",
            srv.addr
        );
        println!("${name} = {values:?} (from {q})");
        vars.push((name, grafana_regex(&values)));
    }

    let mut report = String::new();
    let mut failures = Vec::new();

    // Dashboards: every expression must evaluate to at least one series,
    // and not only NaN (a panel that shows nothing is a bug).
    let dash = dashboard_exprs();
    assert!(dash.len() >= 10, "only {} dashboard expressions", dash.len());
    writeln!(report, "Grafana dashboard expressions ({}):", dash.len()).unwrap();
    for f in &dash {
        let expr = substitute(&f.expr, &vars);
        if expr.contains("$__") || expr.contains("${") || expr.contains("[[") {
            failures.push(format!("{}: unhandled Grafana variable in {expr}", f.origin));
            continue;
        }
        match query(&c, &prom.base, &expr).await {
            Err(e) => failures.push(format!("{}: {expr}: error {e}", f.origin)),
            Ok(res) => {
                let nan = res.iter().filter(|s| sample(s).is_nan()).count();
                writeln!(
                    report,
                    "  {:>2} series{} | {} | {}",
                    res.len(),
                    if nan > 0 { format!(" ({nan} NaN)") } else { String::new() },
                    f.origin,
                    f.expr.replace('\n', " ")
                )
                .unwrap();
                if res.is_empty() {
                    failures.push(format!("{}: {expr}: no data", f.origin));
                } else if nan == res.len() {
                    failures.push(format!("{}: {expr}: only NaN", f.origin));
                }
            }
        }
    }

    // Alert rules. An alert expression is a condition (`LHS > 0.05`) and is
    // rightly empty while nothing is wrong, so each one is checked as:
    //  1. the expression itself evaluates without error;
    //  2. when it ends in a top-level comparison with a number, the same
    //     comparison with the `bool` modifier, `(LHS) OP bool N`, returns at
    //     least one series: the left-hand side has data, and each 0/1 tells
    //     whether the alert condition holds; on this healthy sidecar none
    //     may hold. (A rule without such a comparison must return data
    //     itself.)
    //  3. at the end the server is stopped and `SidewireDown`-style rules on
    //     `up` must then return data (the alert would fire).
    let alerts = alert_exprs();
    writeln!(report, "Alert rule expressions ({}):", alerts.len()).unwrap();
    for f in &alerts {
        let plain = query(&c, &prom.base, &f.expr).await;
        let plain_n = match plain {
            Err(e) => {
                failures.push(format!("{}: {}: error {e}", f.origin, f.expr));
                continue;
            }
            Ok(r) => r.len(),
        };
        let (checked, res) = match split_comparison(&f.expr) {
            Some((lhs, op, rhs)) => {
                let b = format!("({lhs}) {op} bool {rhs}");
                let r = query(&c, &prom.base, &b).await;
                (b, r)
            }
            None => (f.expr.clone(), query(&c, &prom.base, &f.expr).await),
        };
        match res {
            Err(e) => failures.push(format!("{}: {checked}: error {e}", f.origin)),
            Ok(res) => {
                let firing = res.iter().filter(|s| sample(s) == 1.0).count();
                writeln!(
                    report,
                    "  {:>2} series, {firing} true, as-is {plain_n} | {} | {}",
                    res.len(),
                    f.origin,
                    f.expr.split_whitespace().collect::<Vec<_>>().join(" ")
                )
                .unwrap();
                if res.is_empty() {
                    failures.push(format!("{}: {checked}: no data", f.origin));
                }
                if checked != f.expr && (firing > 0 || plain_n > 0) {
                    failures.push(format!(
                        "{}: the alert condition holds on a healthy sidecar: {checked} -> {res:?}",
                        f.origin
                    ));
                }
            }
        }
    }

    // The rules loaded into Prometheus are healthy.
    let (_, rules) = get_json(&c, &format!("{}/api/v1/rules", prom.base)).await;
    let mut loaded = 0;
    for g in rules["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            loaded += 1;
            if r["health"] != "ok" {
                failures.push(format!("rule {} in Prometheus: health {} {}", r["name"], r["health"], r["lastError"]));
            }
        }
    }
    assert_eq!(loaded, alerts.len(), "Prometheus loaded every rule of alerts.yml");

    // Stop sidewire: the `up`-based rules must now fire.
    drop(demo); // stops it
    for h in held {
        h.abort();
    }
    let down_rules: Vec<&Found> = alerts.iter().filter(|f| f.expr.contains("up{")).collect();
    assert!(!down_rules.is_empty(), "no alert on `up` (sidecar down)");
    srv.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for f in down_rules {
        loop {
            let n = query(&c, &prom.base, &f.expr).await.unwrap().len();
            if n > 0 {
                writeln!(report, "  {} fires once sidewire is stopped ({n} series)", f.origin).unwrap();
                break;
            }
            if Instant::now() > deadline {
                failures.push(format!("{}: still empty with sidewire stopped", f.origin));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    println!("{report}");
    let out = root().join("target/monitoring-expressions.txt");
    let _ = std::fs::write(&out, &report);
    println!("(also written to {})", out.display());
    assert!(
        failures.is_empty(),
        "{} expression check(s) failed:\n{}\n\nreport:\n{report}\nprometheus log (tail):\n{}",
        failures.len(),
        failures.join("\n"),
        tail(&prom.log(), 30)
    );
    println!("done in {:?}", started.elapsed());
    drop(prom);
    drop(dir);
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
