//! The deploy kit (issue 5), checked without a Docker engine: the compose
//! file, the Grafana provisioning and the Prometheus files parse; everything
//! they mount or point at exists; the Dockerfile's COPY sources are in the
//! build context; the commands the image and the compose services run are
//! commands the binary accepts; the Grafana dashboard uses only provisioned
//! datasources.

use crate::common::external;
use crate::common::yaml;
use crate::common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    yaml::load(&root().join("docker-compose.yml"))
}

fn services(c: &Value) -> &serde_json::Map<String, Value> {
    c["services"].as_object().expect("docker-compose.yml: `services` is a mapping")
}

/// Strings of a compose field that may be a string or a list of strings.
fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One entry of a service's `volumes:`.
#[derive(Debug)]
struct Mount {
    /// Host path (bind mount) or volume name.
    source: String,
    target: String,
    bind: bool,
}

fn mounts(svc: &Value) -> Vec<Mount> {
    let mut out = Vec::new();
    for v in svc["volumes"].as_array().into_iter().flatten() {
        match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                assert!((2..=3).contains(&parts.len()), "volume {s:?}: expected SOURCE:TARGET[:MODE]");
                let source = parts[0].to_string();
                let bind = source.starts_with('.') || source.starts_with('/');
                out.push(Mount { source, target: parts[1].to_string(), bind });
            }
            Value::Object(o) => {
                let kind = o.get("type").and_then(Value::as_str).unwrap_or("volume");
                out.push(Mount {
                    source: o["source"].as_str().unwrap_or_default().to_string(),
                    target: o["target"].as_str().expect("long volume syntax has a target").to_string(),
                    bind: kind == "bind",
                });
            }
            other => panic!("unexpected volume entry {other}"),
        }
    }
    out
}

/// The host path that a container path of `svc` maps to through a bind
/// mount, if any.
fn host_path(svc: &Value, container_path: &str) -> Option<PathBuf> {
    mounts(svc)
        .into_iter()
        .filter(|m| m.bind)
        .filter_map(|m| {
            let rest = container_path.strip_prefix(m.target.trim_end_matches('/'))?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            Some((m.target.len(), root().join(&m.source).join(rest.trim_start_matches('/'))))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

/// Whether a container path of `svc` lies on a named volume.
fn on_named_volume(svc: &Value, container_path: &str) -> bool {
    mounts(svc).iter().any(|m| !m.bind && container_path.starts_with(m.target.trim_end_matches('/')))
}

#[test]
fn compose_parses_and_every_mount_exists() {
    let c = compose();
    let svcs = services(&c);
    for name in ["sidewire", "demo", "prometheus", "grafana"] {
        assert!(svcs.contains_key(name), "compose has no `{name}` service");
    }
    let declared: BTreeSet<String> = c["volumes"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();

    let mut checked = Vec::new();
    for (name, svc) in svcs {
        assert!(svc.get("image").is_some() || svc.get("build").is_some(), "service {name}: neither image nor build");
        // Build context and Dockerfile.
        if let Some(b) = svc.get("build") {
            let (ctx, file) = match b {
                Value::String(s) => (s.clone(), "Dockerfile".to_string()),
                Value::Object(o) => (
                    o.get("context").and_then(Value::as_str).unwrap_or(".").to_string(),
                    o.get("dockerfile").and_then(Value::as_str).unwrap_or("Dockerfile").to_string(),
                ),
                other => panic!("service {name}: bad build {other}"),
            };
            let ctx = root().join(ctx);
            assert!(ctx.is_dir(), "service {name}: build context {ctx:?} missing");
            assert!(ctx.join(&file).is_file(), "service {name}: {file} missing in {ctx:?}");
            checked.push(format!("{name}: build {}", ctx.join(&file).display()));
        }
        // Volumes: bind mounts exist, named volumes are declared.
        for m in mounts(svc) {
            assert!(m.target.starts_with('/'), "service {name}: mount target {:?} is not absolute", m.target);
            if m.bind {
                assert!(
                    m.source.starts_with("./") || m.source.starts_with("../"),
                    "service {name}: bind mount {:?} is not relative to the compose file",
                    m.source
                );
                let p = root().join(&m.source);
                assert!(p.exists(), "service {name}: mounted path {} does not exist", p.display());
                checked.push(format!("{name}: mount {} -> {}", m.source, m.target));
            } else {
                assert!(
                    declared.contains(&m.source),
                    "service {name}: named volume {:?} is not declared under top-level volumes",
                    m.source
                );
            }
        }
        // Absolute paths in its command / environment that fall under a bind
        // mount must exist on the host side (e.g. --config.file, Grafana's
        // home dashboard).
        let mut words = string_list(&svc["command"]);
        words.extend(string_list(&svc["entrypoint"]));
        if let Some(env) = svc["environment"].as_object() {
            words.extend(env.values().filter_map(Value::as_str).map(str::to_string));
        }
        for w in words {
            let path = w.split_once('=').map(|(_, p)| p).unwrap_or(&w);
            if !path.starts_with('/') || on_named_volume(svc, path) {
                continue;
            }
            if let Some(h) = host_path(svc, path) {
                assert!(h.exists(), "service {name}: {w:?} points at {}, which does not exist", h.display());
                checked.push(format!("{name}: {path} -> {}", h.display()));
            }
        }
        // depends_on: known services; service_healthy needs a healthcheck.
        let deps: Vec<(String, Option<String>)> = match &svc["depends_on"] {
            Value::Array(a) => a.iter().map(|d| (d.as_str().unwrap().to_string(), None)).collect(),
            Value::Object(o) => {
                o.iter().map(|(k, v)| (k.clone(), v["condition"].as_str().map(str::to_string))).collect()
            }
            _ => Vec::new(),
        };
        for (dep, cond) in deps {
            let d = svcs.get(&dep).unwrap_or_else(|| panic!("service {name} depends on unknown service {dep}"));
            if cond.as_deref() == Some("service_healthy") {
                let compose_check = d["healthcheck"].is_object() && d["healthcheck"]["disable"] != Value::Bool(true);
                let image_check = d.get("build").is_some()
                    && std::fs::read_to_string(root().join("Dockerfile"))
                        .unwrap()
                        .lines()
                        .any(|l| l.trim_start().starts_with("HEALTHCHECK"));
                assert!(
                    compose_check || image_check,
                    "service {name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                );
            }
        }
    }
    println!("compose checks:\n  {}", checked.join("\n  "));
}

#[test]
fn provisioning_and_prometheus_files_parse_and_agree_with_compose() {
    let c = compose();
    let svcs = services(&c);

    // Every YAML file of the kit parses.
    let mut files = Vec::new();
    for dir in ["grafana/provisioning", "prometheus"] {
        collect(&root().join(dir), &mut files);
    }
    let yamls: Vec<PathBuf> =
        files.into_iter().filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))).collect();
    assert!(yamls.len() >= 4, "expected the kit's YAML files, found {yamls:?}");
    for p in &yamls {
        let v = yaml::load(p);
        assert!(v.is_object(), "{}: top level is not a mapping", p.display());
    }

    // Datasources: a uid each; the URL's host is a compose service.
    let ds = datasources();
    assert!(!ds.is_empty(), "no datasource provisioned");
    for (uid, (kind, url)) in &ds {
        assert_eq!(kind, "prometheus", "datasource {uid}: type");
        let host = url
            .strip_prefix("http://")
            .and_then(|r| r.split([':', '/']).next())
            .unwrap_or_else(|| panic!("datasource {uid}: url {url:?}"));
        assert!(svcs.contains_key(host), "datasource {uid}: host {host} is not a compose service");
    }

    // Dashboard providers: the path is where compose mounts the dashboards,
    // and it holds at least one dashboard JSON.
    let grafana = &svcs["grafana"];
    let mut providers = 0;
    for f in yamls.iter().filter(|p| p.starts_with(root().join("grafana/provisioning/dashboards"))) {
        for p in yaml::load(f)["providers"].as_array().into_iter().flatten() {
            providers += 1;
            let path = p["options"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: provider without options.path", f.display()));
            let host =
                host_path(grafana, path).unwrap_or_else(|| panic!("provider path {path} is not mounted into grafana"));
            let jsons = std::fs::read_dir(&host)
                .unwrap_or_else(|e| panic!("{}: {e}", host.display()))
                .filter(|e| e.as_ref().unwrap().path().extension().and_then(|x| x.to_str()) == Some("json"))
                .count();
            assert!(jsons > 0, "no dashboard JSON in {}", host.display());
        }
    }
    assert!(providers > 0, "no dashboard provider");
    // The provisioning folder itself is mounted where Grafana reads it.
    assert_eq!(
        host_path(grafana, "/etc/grafana/provisioning").as_deref(),
        Some(root().join("./grafana/provisioning").as_path()),
        "grafana/provisioning must be mounted at /etc/grafana/provisioning"
    );

    // Prometheus: rule files exist next to the config; scrape targets that
    // name a compose service use that service's listen port.
    let prom_dir = root().join("prometheus");
    let prom = yaml::load(&prom_dir.join("prometheus.yml"));
    let rules = prom["rule_files"].as_array().expect("rule_files");
    assert!(!rules.is_empty());
    for r in rules {
        let p = prom_dir.join(r.as_str().unwrap());
        assert!(p.is_file(), "rule file {} missing", p.display());
        let g = yaml::load(&p);
        assert!(!g["groups"].as_array().expect("groups").is_empty(), "{}: no rule group", p.display());
    }
    let listen_port = svcs["sidewire"]["environment"]["SIDEWIRE__SERVER__LISTEN"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .expect("sidewire service sets SIDEWIRE__SERVER__LISTEN")
        .to_string();
    let job = prom["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "sidewire")
        .expect("a scrape job named sidewire (the alert on up{job=\"sidewire\"} needs it)");
    for t in job["static_configs"][0]["targets"].as_array().unwrap() {
        let (host, port) = t.as_str().unwrap().rsplit_once(':').unwrap();
        assert!(svcs.contains_key(host), "scrape target host {host}");
        assert_eq!(port, listen_port, "scrape target port vs sidewire's listen port");
    }
    let prom_svc = &svcs["prometheus"];
    assert_eq!(
        host_path(prom_svc, "/etc/prometheus/prometheus.yml").as_deref(),
        Some(root().join("./prometheus/prometheus.yml").as_path())
    );
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// uid -> (type, url) of every provisioned datasource.
fn datasources() -> BTreeMap<String, (String, String)> {
    let mut files = Vec::new();
    collect(&root().join("grafana/provisioning/datasources"), &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        for d in yaml::load(&f)["datasources"].as_array().into_iter().flatten() {
            let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{}: datasource without uid", f.display()));
            out.insert(
                uid.to_string(),
                (d["type"].as_str().unwrap_or_default().to_string(), d["url"].as_str().unwrap_or_default().to_string()),
            );
        }
    }
    out
}

#[test]
fn dashboard_json_uses_only_provisioned_datasources() {
    let ds = datasources();
    // Grafana's own built-in datasources need no provisioning.
    let builtin = ["-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --"];
    let mut dashboards = Vec::new();
    collect(&root().join("grafana/dashboards"), &mut dashboards);
    assert!(!dashboards.is_empty());
    for f in dashboards {
        let text = std::fs::read_to_string(&f).unwrap();
        let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", f.display()));
        assert!(d["uid"].is_string() && d["title"].is_string(), "{}: uid/title", f.display());

        let check = |what: &str, v: &Value| {
            let uid =
                v["uid"].as_str().unwrap_or_else(|| panic!("{}: {what} has no datasource uid ({v})", f.display()));
            assert!(
                ds.contains_key(uid) || builtin.contains(&uid),
                "{}: {what} uses datasource uid {uid:?}, provisioned: {:?}",
                f.display(),
                ds.keys().collect::<Vec<_>>()
            );
        };

        let mut panels = Vec::new();
        walk_panels(&d["panels"], &mut panels);
        let mut ids = BTreeSet::new();
        let mut with_queries = 0;
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(p["id"].as_i64().unwrap_or_else(|| panic!("panel {title}: no id"))),
                "duplicate panel id in {title}"
            );
            assert!(p["gridPos"].is_object(), "panel {title}: no gridPos");
            if p["type"] == "row" {
                if !p["datasource"].is_null() {
                    check(&format!("row {title}"), &p["datasource"]);
                }
                continue;
            }
            // Every non-row panel names its datasource, and has queries.
            check(&format!("panel {title}"), &p["datasource"]);
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {title}: no targets"));
            assert!(!targets.is_empty(), "panel {title}: no targets");
            for t in targets {
                if !t["datasource"].is_null() {
                    check(&format!("panel {title} target"), &t["datasource"]);
                }
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "panel {title}: a target without expr");
            }
            with_queries += 1;
        }
        assert!(with_queries > 0, "{}: no panel with queries", f.display());
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if !v["datasource"].is_null() {
                check(&format!("variable {}", v["name"]), &v["datasource"]);
            }
        }
        for a in d["annotations"]["list"].as_array().into_iter().flatten() {
            if !a["datasource"].is_null() {
                check("annotation", &a["datasource"]);
            }
        }
        println!("{}: {} panels, {with_queries} with queries", f.display(), panels.len());
    }
}

/// Every panel, rows' nested panels included.
fn walk_panels<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    for p in v.as_array().into_iter().flatten() {
        out.push(p);
        walk_panels(&p["panels"], out);
    }
}

// ------------------------------------------------------------- Dockerfile

/// Dockerfile instructions: (keyword upper-cased, rest), continuations joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (cur.is_empty() && t.is_empty()) {
            continue;
        }
        if let Some(s) = t.strip_suffix('\\') {
            cur.push_str(s);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (k, rest) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((k.to_ascii_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

/// The arguments of an instruction: JSON form or whitespace-separated.
fn args(rest: &str) -> Vec<String> {
    if rest.starts_with('[') {
        serde_json::from_str(rest).unwrap_or_else(|e| panic!("bad JSON form {rest}: {e}"))
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    }
}

/// Whether `.dockerignore` excludes `path` (its simple patterns: a name or
/// folder, or `*.ext`).
fn docker_ignored(path: &str) -> bool {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap_or_default();
    let path = path.trim_start_matches("./");
    ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).any(|pat| {
        let pat = pat.trim_end_matches('/');
        if let Some(ext) = pat.strip_prefix("*.") {
            path.ends_with(&format!(".{ext}"))
        } else {
            path == pat || path.starts_with(&format!("{pat}/"))
        }
    })
}

#[test]
fn dockerfile_copy_sources_exist_and_the_image_is_sane() {
    let ins = dockerfile();
    let mut stages = BTreeSet::new();
    let mut froms = 0;
    let mut copies = Vec::new();
    let mut user = None;
    let mut healthcheck = None;
    let mut cmd = None;
    for (k, rest) in &ins {
        match k.as_str() {
            "FROM" => {
                froms += 1;
                let a = args(rest);
                if let Some(i) = a.iter().position(|w| w.eq_ignore_ascii_case("as")) {
                    stages.insert(a[i + 1].clone());
                }
            }
            "COPY" | "ADD" => {
                let a = args(rest);
                let (flags, paths): (Vec<_>, Vec<_>) = a.into_iter().partition(|w| w.starts_with("--"));
                if let Some(from) = flags.iter().find_map(|f| f.strip_prefix("--from=")) {
                    assert!(stages.contains(from), "COPY --from={from}: no such stage");
                    continue;
                }
                assert!(paths.len() >= 2, "{k} {rest}: needs SRC... DEST");
                for src in &paths[..paths.len() - 1] {
                    let p = root().join(src);
                    assert!(p.exists(), "{k} source {src} does not exist");
                    if src != "." {
                        assert!(!docker_ignored(src), "{k} source {src} is excluded by .dockerignore");
                    }
                    copies.push(src.clone());
                }
            }
            "USER" => user = Some(rest.clone()),
            "HEALTHCHECK" => healthcheck = Some(rest.clone()),
            "CMD" => cmd = Some(args(rest)),
            _ => {}
        }
    }
    assert!(froms >= 2, "expected a multi-stage build");
    assert!(!copies.is_empty());
    let user = user.expect("the runtime image sets USER");
    assert!(user != "root" && user != "0" && !user.starts_with("0:"), "the image runs as root");
    assert!(healthcheck.is_some(), "no HEALTHCHECK");
    assert!(cmd.is_some(), "no CMD");
    // `COPY . .` + `cargo build --locked` needs these in the context.
    for needed in ["Cargo.toml", "Cargo.lock", "src", "assets", "config"] {
        assert!(root().join(needed).exists());
        assert!(!docker_ignored(needed), "{needed} is excluded by .dockerignore");
    }
    println!("COPY sources: {copies:?}; USER {user}");
}

// ------------------------------------------- commands the kit runs exist

fn sidewire_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sidewire")
}

/// Runs the binary with `argv` (without the leading `sidewire`) plus
/// `--help`: clap rejects an unknown subcommand or flag before printing help,
/// so exit 0 means the command line is one the binary accepts.
fn accepts(argv: &[String]) -> Result<(), String> {
    let out = Command::new(sidewire_bin()).args(argv).arg("--help").env_remove("SIDEWIRE_CONFIG").output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`sidewire {}` is not accepted by the binary:\n{}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn commands_in_the_dockerfile_and_compose_are_ones_the_binary_accepts() {
    let mut lines: Vec<(String, Vec<String>)> = Vec::new();
    for (k, rest) in dockerfile() {
        match k.as_str() {
            "CMD" | "ENTRYPOINT" => lines.push((format!("Dockerfile {k}"), args(&rest))),
            "HEALTHCHECK" => {
                let (_, cmd) = rest.split_once("CMD").expect("HEALTHCHECK ... CMD ...");
                lines.push(("Dockerfile HEALTHCHECK".into(), args(cmd.trim())));
            }
            _ => {}
        }
    }
    let c = compose();
    for (name, svc) in services(&c) {
        if svc.get("build").is_some() && !svc["command"].is_null() {
            lines.push((format!("compose service {name}"), string_list(&svc["command"])));
        }
    }
    let mut errors = Vec::new();
    for (what, argv) in &lines {
        assert_eq!(argv.first().map(String::as_str), Some("sidewire"), "{what}: {argv:?}");
        if let Err(e) = accepts(&argv[1..]) {
            errors.push(format!("{what}: {e}"));
        } else {
            println!("{what}: sidewire {} — accepted", argv[1..].join(" "));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_healthcheck_command_tells_up_from_down() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let url = srv.url("/healthz");
    let up = tokio::task::spawn_blocking(move || {
        Command::new(sidewire_bin()).args(["health", "--url", &url]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(up.status.success(), "`sidewire health` against a running server: {}", String::from_utf8_lossy(&up.stderr));
    let (port, _reserved) = refused_port();
    let dead = format!("http://127.0.0.1:{port}/healthz");
    let down = tokio::task::spawn_blocking(move || {
        Command::new(sidewire_bin()).args(["health", "--url", &dead]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(!down.status.success(), "`sidewire health` against nothing succeeded");
    srv.stop().await;
}

// ----------------------------------------------- outside-program policy

#[test]
fn external_program_policy_skips_or_fails() {
    let none = "sidewire-test-no-such-program-4f1c";
    // Missing and not required: skipped (None), no panic.
    assert!(external::find_with(&[], "policy", "nosuch", &[none], "no hint").is_none());
    assert!(external::find_with(&["prometheus".into()], "policy", "nosuch", &[none], "no hint").is_none());
    // Missing and required: a failure.
    let r = std::panic::catch_unwind(|| {
        external::find_with(&["chromium".into(), "nosuch".into()], "policy", "NoSuch", &[none], "no hint")
    });
    assert!(r.is_err(), "a required missing program must fail the test");
    // Present: found, whatever the list says.
    assert!(external::find_with(&["sh".into()], "policy", "sh", &["sh"], "").is_some());
}
