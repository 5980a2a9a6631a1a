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
            // A file mounted on its own: no trailing `/` (join("") adds one).
            let rest = rest.trim_start_matches('/');
            let src = root().join(&m.source);
            Some((m.target.len(), if rest.is_empty() { src } else { src.join(rest) }))
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
    // Every scrape job's targets (static or found by DNS) that name a
    // compose service use a port that service's sidewire listens on.
    for job in prom["scrape_configs"].as_array().unwrap() {
        for (host, port) in scrape_targets(job) {
            let Some(svc) = svcs.get(&host) else { continue };
            if let Some(p) = sidewire_port(svc) {
                assert_eq!(port, p, "job {}: target {host}:{port} vs the service's listen port", job["job_name"]);
            }
        }
    }
}

/// (host, port) of a scrape job's targets: `static_configs` and A-record
/// `dns_sd_configs` (names plus `port`).
fn scrape_targets(job: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for sc in job["static_configs"].as_array().into_iter().flatten() {
        for t in sc["targets"].as_array().into_iter().flatten() {
            let (host, port) = t.as_str().unwrap().rsplit_once(':').expect("target host:port");
            out.push((host.to_string(), port.to_string()));
        }
    }
    for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
        assert_eq!(sd["type"].as_str().unwrap_or("SRV"), "A", "job {}: dns_sd_configs type", job["job_name"]);
        let port =
            sd["port"].as_i64().unwrap_or_else(|| panic!("job {}: dns_sd_configs without port", job["job_name"]));
        for n in sd["names"].as_array().into_iter().flatten() {
            out.push((n.as_str().unwrap().to_string(), port.to_string()));
        }
    }
    out
}

/// The port a sidewire service listens on: its `SIDEWIRE__SERVER__LISTEN`,
/// else the `server.listen` of the config file it runs with, else the
/// image's; `None` for services that do not run sidewire serve.
fn sidewire_port(svc: &Value) -> Option<String> {
    let cmd = string_list(&svc["command"]);
    let serves = svc.get("build").is_some() && (cmd.is_empty() || cmd.get(1).map(String::as_str) == Some("serve"));
    if !serves {
        return None;
    }
    let listen = match svc["environment"]["SIDEWIRE__SERVER__LISTEN"].as_str() {
        Some(l) => l.to_string(),
        None => replica_config(svc).server.listen,
    };
    Some(listen.rsplit(':').next().unwrap().to_string())
}

/// The `ENV` settings of the Dockerfile's last stage (the runtime image).
fn image_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (k, rest) in dockerfile() {
        match k.as_str() {
            "FROM" => env.clear(),
            "ENV" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("ENV {kv}: expected KEY=VALUE"));
                    env.push((k.to_string(), v.trim_matches('"').to_string()));
                }
            }
            _ => {}
        }
    }
    env
}

/// The configuration a sidewire service runs with, parsed and validated as
/// `sidewire serve` does: its `--config` file (through the bind mount that
/// puts it in the container) with the image's and the service's
/// `SIDEWIRE__...` environment on top.
fn replica_config(svc: &Value) -> sidewire::config::Config {
    let cmd = string_list(&svc["command"]);
    let path = cmd
        .iter()
        .position(|w| w == "--config")
        .map(|i| cmd[i + 1].clone())
        .unwrap_or_else(|| "/etc/sidewire/sidewire.toml".into());
    let host = host_path(svc, &path).unwrap_or_else(|| root().join("config/sidewire.toml"));
    let text = std::fs::read_to_string(&host).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
    let mut env = image_env();
    for (k, v) in svc["environment"].as_object().into_iter().flatten() {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v));
    }
    env.retain(|(k, _)| k.starts_with(sidewire::config::ENV_PREFIX));
    sidewire::config::Config::from_toml(&text, &env).unwrap_or_else(|issues| {
        panic!(
            "{} with {env:?} does not pass check-config:\n{}",
            host.display(),
            issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n")
        )
    })
}

// ------------------------------------------------ profile "cluster"

const REPLICAS: [&str; 3] = ["sidewire-1", "sidewire-2", "sidewire-3"];

fn profiles(svc: &Value) -> Vec<String> {
    string_list(&svc["profiles"])
}

#[test]
fn cluster_profile_runs_three_replicas_on_postgres_and_redis() {
    let c = compose();
    let svcs = services(&c);
    // The default stack is untouched: no profile on its services.
    for name in ["sidewire", "demo", "prometheus", "grafana"] {
        assert!(profiles(&svcs[name]).is_empty(), "default service {name} must not be in a profile");
    }
    for name in ["postgres", "redis", "nginx"].iter().chain(REPLICAS.iter()) {
        let svc = svcs.get(*name).unwrap_or_else(|| panic!("compose has no `{name}` service (profile cluster)"));
        assert_eq!(profiles(svc), ["cluster"], "service {name}: profiles");
    }
    // Every service in a profile is in "cluster".
    for (name, svc) in svcs {
        for p in profiles(svc) {
            assert_eq!(p, "cluster", "service {name}: unknown profile {p}");
        }
    }
    // The engines have healthchecks the replicas wait for.
    for engine in ["postgres", "redis"] {
        let hc = &svcs[engine]["healthcheck"];
        assert!(hc["test"].is_array() && hc["disable"] != Value::Bool(true), "{engine}: no healthcheck");
    }

    let pg_env = &svcs["postgres"]["environment"];
    let mut names = BTreeSet::new();
    for name in REPLICAS {
        let svc = &svcs[name];
        assert!(svc.get("build").is_some(), "{name}: runs the image built from this repository");
        let deps = svc["depends_on"].as_object().unwrap_or_else(|| panic!("{name}: depends_on with conditions"));
        for engine in ["postgres", "redis"] {
            assert_eq!(deps[engine]["condition"], "service_healthy", "{name} waits for a healthy {engine}");
        }
        let cfg = replica_config(svc);
        use sidewire::config::{BroadcastBackend, PluginKind};
        assert_eq!(cfg.persist.plugin, PluginKind::Postgres, "{name}: persist.plugin");
        assert_eq!(cfg.broadcast.backend, BroadcastBackend::Redis, "{name}: broadcast.backend");
        assert!(cfg.server.trust_forwarded_for, "{name}: server.trust_forwarded_for (behind nginx)");
        assert!(
            cfg.listen_addr().unwrap().ip().is_unspecified(),
            "{name}: server.listen must take connections from nginx and Prometheus"
        );
        assert!(!cfg.server.replica_name.is_empty(), "{name}: server.replica_name");
        assert!(
            names.insert(cfg.server.replica_name.clone()),
            "{name}: replica_name {} repeats",
            cfg.server.replica_name
        );
        // The store and the bus are the compose services, with the
        // database's own credentials.
        let pg: tokio_postgres::Config = cfg.persist.postgres_url.expose().parse().unwrap();
        let pg_hosts: Vec<String> = pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[allow(unreachable_patterns)]
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(pg_hosts, ["postgres"], "{name}: persist.postgres_url host");
        assert_eq!(pg.get_ports().first().copied().unwrap_or(5432), 5432);
        assert_eq!(Some(pg.get_user().unwrap_or_default()), pg_env["POSTGRES_USER"].as_str(), "{name}: database user");
        assert_eq!(
            pg.get_password().map(|p| String::from_utf8_lossy(p).to_string()).as_deref(),
            pg_env["POSTGRES_PASSWORD"].as_str(),
            "{name}: database password"
        );
        assert_eq!(pg.get_dbname(), pg_env["POSTGRES_DB"].as_str(), "{name}: database name");
        let redis = cfg.broadcast.redis_url.expose().to_string();
        let redis_host = redis
            .strip_prefix("redis://")
            .and_then(|r| r.rsplit('@').next())
            .and_then(|r| r.split([':', '/']).next())
            .unwrap_or_else(|| panic!("{name}: broadcast.redis_url {redis:?}"));
        assert_eq!(redis_host, "redis", "{name}: broadcast.redis_url host");
    }
    println!("replicas: {names:?}");

    // Prometheus scrapes each replica directly, on its listen port.
    let prom = yaml::load(&root().join("prometheus/prometheus.yml"));
    let mut scraped = BTreeSet::new();
    for job in prom["scrape_configs"].as_array().unwrap() {
        for (host, port) in scrape_targets(job) {
            if REPLICAS.contains(&host.as_str()) {
                assert_eq!(Some(port.clone()), sidewire_port(&svcs[&host]), "scrape target {host}:{port}");
                scraped.insert(host);
            }
        }
    }
    assert_eq!(scraped, REPLICAS.iter().map(|s| s.to_string()).collect(), "Prometheus scrapes every replica");
    // The rules' `up` alert covers the replicas' job.
    let alerts = std::fs::read_to_string(root().join("prometheus/alerts.yml")).unwrap();
    assert!(alerts.contains("sidewire-cluster"), "SidewireDown should cover job sidewire-cluster");
}

// ----------------------------------------------------------- nginx

/// nginx's config as compose mounts it into the `nginx` service.
fn nginx_conf() -> (PathBuf, String) {
    let c = compose();
    let p = host_path(&services(&c)["nginx"], "/etc/nginx/nginx.conf")
        .expect("the nginx service mounts its config at /etc/nginx/nginx.conf");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (p, text)
}

/// The `{ ... }` body of every block `keyword args {` (comments removed).
fn blocks(conf: &str, keyword: &str) -> Vec<(String, String)> {
    let text: String = conf.lines().map(|l| l.split('#').next().unwrap()).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(keyword) {
        let before_ok = i == 0 || rest[..i].ends_with(|c: char| c.is_whitespace() || c == '{' || c == '}' || c == ';');
        let after = &rest[i + keyword.len()..];
        let Some(open) = after.find(['{', ';']) else { break };
        if !before_ok || !after.starts_with(char::is_whitespace) || &after[open..open + 1] != "{" {
            rest = after;
            continue;
        }
        let args = after[..open].trim().to_string();
        let body_start = open + 1;
        let mut depth = 1;
        let mut end = body_start;
        for (j, ch) in after[body_start..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = body_start + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((args, after[body_start..end].to_string()));
        rest = &after[end..];
    }
    out
}

/// The directives `name ...;` at any depth of `body`: their arguments.
fn directives(body: &str, name: &str) -> Vec<String> {
    body.split(['{', '}', ';'])
        .map(str::trim)
        .filter_map(|d| {
            d.strip_prefix(name).filter(|r| r.starts_with(char::is_whitespace)).map(|r| r.trim().to_string())
        })
        .collect()
}

#[test]
fn nginx_balances_the_three_replicas_with_websocket_upgrade_and_forwarded_for() {
    let (path, conf) = nginx_conf();
    let c = compose();
    let svcs = services(&c);

    // One upstream holding exactly the replicas, on their listen ports.
    let upstreams = blocks(&conf, "upstream");
    assert_eq!(upstreams.len(), 1, "{}: one upstream block", path.display());
    let (up_name, up_body) = &upstreams[0];
    let servers: BTreeSet<String> =
        directives(up_body, "server").iter().map(|s| s.split_whitespace().next().unwrap().to_string()).collect();
    let want: BTreeSet<String> =
        REPLICAS.iter().map(|r| format!("{r}:{}", sidewire_port(&svcs[*r]).unwrap())).collect();
    assert_eq!(servers, want, "upstream {up_name}: servers");

    // Every location that proxies goes to that upstream and sets
    // X-Forwarded-For (a location with any proxy_set_header inherits none).
    let locations = blocks(&conf, "location");
    let mut ws_paths = BTreeSet::new();
    let mut proxied = 0;
    for (args, body) in &locations {
        let pass = directives(body, "proxy_pass");
        if pass.is_empty() {
            continue;
        }
        proxied += 1;
        assert_eq!(pass, [format!("http://{up_name}")], "location {args}: proxy_pass");
        let headers: Vec<(String, String)> = directives(body, "proxy_set_header")
            .iter()
            .map(|h| {
                let (k, v) = h.split_once(char::is_whitespace).unwrap();
                (k.to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let header = |k: &str| headers.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.as_str());
        assert_eq!(header("x-forwarded-for"), Some("$remote_addr"), "location {args}: X-Forwarded-For");
        // Which dashboard WebSocket paths this location takes.
        let (modifier, pattern) = match args.split_once(char::is_whitespace) {
            Some((m, p)) => (m.trim(), p.trim()),
            None => ("", args.as_str()),
        };
        for ws in ["/api/v1/ws/dashboard", "/ws/dashboard"] {
            let takes = match modifier {
                "~" | "~*" => regex_lite::Regex::new(pattern).unwrap().is_match(ws),
                "=" => pattern == ws,
                _ => false,
            };
            if takes {
                assert_eq!(header("upgrade"), Some("$http_upgrade"), "location {args}: Upgrade header");
                let conn = header("connection").unwrap_or_else(|| panic!("location {args}: no Connection header"));
                assert!(
                    conn == "upgrade" || conn == "\"upgrade\"" || conn.starts_with('$'),
                    "location {args}: Connection {conn}"
                );
                assert_eq!(directives(body, "proxy_http_version").first().map(String::as_str), Some("1.1"));
                ws_paths.insert(ws);
            }
        }
    }
    assert!(proxied >= 2, "expected the WebSocket location and a catch-all");
    assert_eq!(ws_paths.len(), 2, "both dashboard WebSocket paths get the upgrade headers: {ws_paths:?}");
    // A map from $http_upgrade when Connection comes from a variable.
    if conf.contains("$connection_upgrade") {
        let maps = blocks(&conf, "map");
        assert!(
            maps.iter().any(|(a, b)| a.starts_with("$http_upgrade") && b.contains("upgrade")),
            "map for $connection_upgrade"
        );
    }
    // nginx publishes a port.
    assert!(!string_list(&svcs["nginx"]["ports"]).is_empty(), "nginx publishes no port");

    // `nginx -t` on it, when nginx is there (policy: common/external.rs).
    // nginx resolves upstream names at load, so they become 127.0.0.1, and
    // its temp paths move to a scratch folder (no root needed).
    let Some(nginx) = external::find(
        "nginx_balances_the_three_replicas_with_websocket_upgrade_and_forwarded_for",
        "nginx",
        &["nginx", "/usr/sbin/nginx"],
        "install Debian's `nginx` package",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut t = conf.clone();
    for r in REPLICAS {
        t = t.replace(&format!("{r}:"), "127.0.0.1:");
    }
    let d = dir.path().display();
    let temps = format!(
        "http {{\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
         fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
    );
    t = t.replacen("http {\n", &temps, 1);
    let tmp = dir.path().join("nginx.conf");
    std::fs::write(&tmp, t).unwrap();
    let out = Command::new(&nginx)
        .arg("-t")
        .arg("-c")
        .arg(&tmp)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg("stderr")
        .arg("-g")
        .arg(format!("pid {d}/nginx.pid;"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("nginx -t:\n{text}");
    assert!(
        out.status.success() && text.contains("test is successful"),
        "nginx -t failed on {}:\n{text}",
        path.display()
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
