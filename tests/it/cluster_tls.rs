//! TLS to the cluster's services (issue 20), on real servers of this
//! machine: the machine's PostgreSQL (`ssl = on` with Debian's self-signed
//! "snakeoil" certificate, CN and SAN `localhost`) for libpq's sslmodes,
//! and a `redis-server` of the test's own with `--tls-port`, a CA and a
//! server certificate made here with the `openssl` CLI, for `rediss://`.
//! The machine's services are never reconfigured; the TLS Redis is started
//! and stopped by the test.
//!
//! Skips (with the reason printed) when PostgreSQL has no TLS, or
//! `openssl`/`redis-server` are missing, unless `SIDEWIRE_TEST_REQUIRE`
//! lists `postgres`, `openssl` or `redis-server`.

use crate::common::api::post_ingest;
use crate::common::external;
use crate::common::services::{Db, NEXT, PG_ADMIN};
use crate::common::{client, get_json, wait_listening};
use futures::StreamExt;
use serde_json::{json, Value};
use sidewire::persist::postgres::{PostgresOptions, PostgresPlugin};
use sidewire::persist::PersistCallback;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

const PG_PASSWORD: &str = "pg-s3cret-pw";
const REDIS_USER: &str = "sidewire";
const REDIS_PASSWORD: &str = "redis-s3cret-pw";

/// The machine's PostgreSQL server certificate, when it serves TLS.
async fn pg_server_cert(test: &str) -> Option<PathBuf> {
    let (admin, conn) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let file: String = admin.query_one("SHOW ssl_cert_file", &[]).await.unwrap().get(0);
    let path = PathBuf::from(&file);
    let why = if ssl != "on" {
        format!("the machine's PostgreSQL has ssl = {ssl}")
    } else if std::fs::read(&path).is_err() {
        format!("its certificate {file} is not readable")
    } else {
        return Some(path);
    };
    assert!(!external::is_required("postgres"), "{test}: {why}, and SIDEWIRE_TEST_REQUIRE lists postgres");
    external::skip(test, &why);
    None
}

/// A CA, a server certificate it signed (for `localhost` and 127.0.0.1)
/// and another CA that signed nothing here.
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    other_ca: PathBuf,
}

fn make_certs(test: &str, dir: &Path) -> Option<Certs> {
    let openssl = external::find(test, "openssl", &["openssl"], "install Debian's openssl package")?;
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    for name in ["ca", "other-ca"] {
        let subject = format!("/CN=sidewire test {name}");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject]);
        run(&args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    run(&args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "server.ext",
    ]);
    Some(Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        other_ca: dir.join("other-ca.pem"),
    })
}

/// A `redis-server` of this test's own, TLS only, with an ACL user (the
/// default user off), on a port of its own.
struct TlsRedis {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl TlsRedis {
    fn find(test: &str) -> Option<PathBuf> {
        external::find(test, "redis-server", &["redis-server"], "install Debian's redis-server package")
    }

    async fn start(bin: PathBuf, dir: &Path, certs: &Certs) -> TlsRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            dir.join("redis.conf"),
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\nsave \"\"\nappendonly no\ndir {}\n\
                 user default off\nuser {REDIS_USER} on >{REDIS_PASSWORD} ~* &* +@all\n",
                certs.server_cert.display(),
                certs.server_key.display(),
                certs.ca.display(),
                dir.display()
            ),
        )
        .unwrap();
        let mut r = TlsRedis { bin, dir: dir.to_path_buf(), port, child: None };
        r.restart().await;
        r
    }

    /// Starts it (again, on the same port) and waits until it listens.
    async fn restart(&mut self) {
        let log = std::fs::File::options().create(true).append(true).open(self.dir.join("redis.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg(self.dir.join("redis.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("rediss://{REDIS_USER}:{REDIS_PASSWORD}@localhost:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One replica: the real binary, as a child process.
struct Replica {
    child: Child,
    base: String,
    port: u16,
    dir: PathBuf,
}

impl Replica {
    fn start(dir: &Path, name: &str, config: &str) -> Replica {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("sidewire.toml");
        std::fs::write(&cfg, format!("[server]\nlisten = \"127.0.0.1:0\"\nreplica_name = \"{name}\"\n{config}"))
            .unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sidewire"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .current_dir(&dir)
            .env_remove("SIDEWIRE_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sidewire");
        let mut r = Replica { child, base: String::new(), port: 0, dir };
        let addr = wait_listening(&mut r.child, &r.dir.join("server.log"), &format!("replica {name}"));
        (r.port, r.base) = (addr.port(), format!("http://{addr}"));
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    async fn ws(&self) -> Ws {
        let url = format!("ws://127.0.0.1:{}/api/v1/ws/dashboard", self.port);
        let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url))
            .await
            .expect("ws connect timed out")
            .expect("ws connect");
        // Up to the first stats_update: the socket is live.
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("socket ended before ready") };
            if serde_json::from_str::<Value>(&t).unwrap()["type"] == "stats_update" {
                return ws;
            }
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config of a cluster replica on this test's database (over TLS) and
/// the given Redis; `extra` is appended.
fn replica_config(db: &Db, redis_url: &str, ca: &Path, prefix: &str, extra: &str) -> String {
    format!(
        "[persist]\nplugin = \"postgres\"\npostgres_url = {:?}\npostgres_pool_size = 4\n\
         [broadcast]\nbackend = \"redis\"\nredis_url = {redis_url:?}\nredis_ca_file = {:?}\nprefix = {prefix:?}\n\
         [stats]\ninterval_secs = 1\n\
         [ws]\nmax_connections_per_ip = 1000\nconnect_rate_per_ip_per_min = 100000\n{extra}",
        format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:5432/{}?sslmode=require", db.name),
        ca.display().to_string(),
    )
}

fn prefix(tag: &str) -> String {
    format!("swtls-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

async fn metric(c: &reqwest::Client, base: &str, series: &str) -> Option<f64> {
    let text = c.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads event seqs from a dashboard socket until `until` is seen.
async fn events_until(ws: &mut Ws, until: u64, within: Duration) -> Vec<u64> {
    let deadline = Instant::now() + within;
    let mut seqs = Vec::new();
    while seqs.last().is_none_or(|s| *s < until) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            other => panic!("socket ended or timed out after seqs {:?}: {other:?}", seqs.last()),
        };
        if let Message::Text(t) = msg {
            if let Some(seq) = serde_json::from_str::<Value>(&t).unwrap().get("seq").and_then(Value::as_u64) {
                seqs.push(seq);
            }
        }
    }
    seqs
}

/// Ingests `n` events on `base`; their seqs.
async fn ingest(c: &reqwest::Client, base: &str, tag: &str, n: usize) -> Vec<u64> {
    let body: Vec<Value> = (0..n).map(|i| json!({"type": "tls_test", "id": format!("{tag}-{i}")})).collect();
    let r = post_ingest(c, base, Some("application/json"), None, Value::Array(body).to_string()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect()
}

async fn open_store(url: &str) -> Result<(), String> {
    let plugin = PostgresPlugin::new(PostgresOptions {
        url: url.into(),
        pool_size: 2,
        notify_channel: None,
        replica: "tls".into(),
    })
    .map_err(|e| e.to_string())?;
    plugin.recover().await.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmodes_on_the_machines_server() {
    let test = "postgres_sslmodes_on_the_machines_server";
    let Some(db) = Db::create(test).await else { return };
    let Some(snakeoil) = pg_server_cert(test).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = |host: &str, query: &str| format!("postgres://postgres:{PG_PASSWORD}@{host}:5432/{}?{query}", db.name);
    let root = format!("sslrootcert={}", snakeoil.display());
    // Encrypted, and so it is: the server's view of this session.
    let target = sidewire::tls::postgres::parse(&url("127.0.0.1", "sslmode=require")).unwrap();
    let (client, conn) = target.config.connect(target.tls.connector().unwrap()).await.expect("sslmode=require");
    tokio::spawn(conn);
    let ssl: bool =
        client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl, "sslmode=require did not use TLS");
    for (host, query) in [
        ("127.0.0.1", "sslmode=require".to_string()),
        ("127.0.0.1", String::new()), // libpq's default, prefer
        ("127.0.0.1", "sslmode=disable".to_string()),
        // The chain only: the certificate names localhost, not 127.0.0.1.
        ("127.0.0.1", format!("sslmode=verify-ca&{root}")),
        ("localhost", format!("sslmode=verify-full&{root}")),
    ] {
        let u = url(host, &query);
        open_store(&u).await.unwrap_or_else(|e| panic!("{host} {query}: {e}"));
    }
    // A multi-host URL: the first host refuses, the writer is the second.
    let (refused, _keep) = crate::common::refused_port();
    let multi = format!(
        "postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{refused},localhost:5432/{}?target_session_attrs=read-write&\
         sslmode=verify-full&{root}",
        db.name
    );
    open_store(&multi).await.unwrap_or_else(|e| panic!("multi-host: {e}"));
    // Failures: what failed, the host and the sslmode, once; never the password.
    let e = open_store(&url("127.0.0.1", &format!("sslmode=verify-full&{root}"))).await.unwrap_err();
    assert!(e.contains("hostname mismatch") && e.contains("127.0.0.1") && e.contains("sslmode=verify-full"), "{e}");
    assert_eq!(e.matches("hostname mismatch").count(), 1, "{e}");
    let Some(certs) = make_certs(test, dir.path()) else { return };
    let other = format!("sslmode=verify-ca&sslrootcert={}", certs.other_ca.display());
    let e = open_store(&url("localhost", &other)).await.unwrap_err();
    assert!(e.contains("unknown CA") && e.contains("localhost") && e.contains("sslmode=verify-ca"), "{e}");
    assert!(e.contains("other-ca.pem"), "the message names the root file: {e}");
    assert!(!e.contains(PG_PASSWORD), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_postgres_tls_connection_is_told_once_without_the_password() {
    let test = "a_failing_postgres_tls_connection_is_told_once_without_the_password";
    let Some(db) = Db::create(test).await else { return };
    let Some(snakeoil) = pg_server_cert(test).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sidewire.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[persist]\nplugin = \"postgres\"\n\
             postgres_url = \"postgres://postgres:{PG_PASSWORD}@127.0.0.1:5432/{}?sslmode=verify-full&sslrootcert={}\"\n\
             [telemetry]\nlog_level = \"debug\"\n",
            db.name,
            snakeoil.display()
        ),
    )
    .unwrap();
    // check-config has nothing to object to: the failure needs the server.
    let check = Command::new(env!("CARGO_BIN_EXE_sidewire")).arg("check-config").arg(&cfg).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_sidewire"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .env_remove("SIDEWIRE_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started although TLS must fail");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains(PG_PASSWORD), "the password was printed:\n{all}");
    let error = all.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line:\n{all}"));
    assert!(error.contains("127.0.0.1") && error.contains("sslmode=verify-full"), "{error}");
    assert_eq!(error.matches("hostname mismatch").count(), 1, "said once: {error}");
    assert_eq!(error.matches("postgres unavailable").count(), 1, "said once: {error}");
    assert!(all.contains("DEBUG"), "not at debug level:\n{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_checks_tls_settings_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sidewire.toml");
    std::fs::write(
        &cfg,
        "[persist]\nplugin = \"postgres\"\n\
         postgres_url = \"postgres://u:pw@db/app?sslmode=verify-ca&sslrootcert=/nonexistent/root.crt\"\n\
         [broadcast]\nbackend = \"redis\"\nredis_url = \"rediss://u:pw@cache:6380/0\"\nredis_ca_file = \"/nonexistent/ca.pem\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sidewire")).arg("check-config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("persist.postgres_url") && err.contains("sslrootcert: cannot read /nonexistent/root.crt"),
        "{err}"
    );
    assert!(err.contains("broadcast.redis_ca_file") && err.contains("/nonexistent/ca.pem"), "{err}");
    std::fs::write(
        &cfg,
        "[persist]\nplugin = \"postgres\"\npostgres_url = \"postgres://u:pw@db/app?sslmode=verify_full\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sidewire")).arg("check-config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sslmode=verify_full: unknown mode"), "{err}");
    assert!(!err.contains("pw@"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_over_rediss_deliver_fall_back_and_recover() {
    let test = "two_replicas_over_rediss_deliver_fall_back_and_recover";
    let Some(bin) = TlsRedis::find(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(certs) = make_certs(test, dir.path()) else { return };
    let Some(db) = Db::create(test).await else { return };
    let mut redis = TlsRedis::start(bin, dir.path(), &certs).await;
    let config = replica_config(&db, &redis.url(), &certs.ca, &prefix("pair"), "");
    let a = Replica::start(dir.path(), "a", &config);
    let b = Replica::start(dir.path(), "b", &config);
    let c = client();
    let bus = "sidewire_broadcast_bus_up{backend=\"redis\"} ";
    for r in [&a, &b] {
        eventually(Duration::from_secs(10), "the rediss:// bus to connect", || {
            let (c, base) = (c.clone(), r.base.clone());
            async move { (metric(&c, &base, bus).await == Some(1.0)).then_some(()) }
        })
        .await;
    }
    // Delivery across replicas over the TLS bus.
    let mut ws = b.ws().await;
    let seqs = ingest(&c, &a.base, "up", 5).await;
    assert_eq!(events_until(&mut ws, seqs[4], Duration::from_secs(5)).await, seqs);
    let received = eventually(Duration::from_secs(5), "b to receive over the bus", || {
        let (c, base) = (c.clone(), b.base.clone());
        async move { metric(&c, &base, "sidewire_broadcast_received_total ").await.filter(|n| *n > 0.0) }
    })
    .await;
    // The TLS Redis goes away: events still arrive, from the store.
    redis.stop();
    let mut last = seqs[4];
    for k in 0..4 {
        let seqs = ingest(&c, &a.base, &format!("down-{k}"), 3).await;
        let acked = Instant::now();
        let got = events_until(&mut ws, seqs[2], Duration::from_secs(5)).await;
        assert!(acked.elapsed() < Duration::from_secs(2), "took {:?} with Redis down", acked.elapsed());
        assert_eq!(got, ((last + 1)..=seqs[2]).collect::<Vec<_>>());
        last = seqs[2];
    }
    let url = format!("{}/readyz", a.base);
    eventually(Duration::from_secs(10), "readyz to report degraded", || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let (status, body) = get_json(&c, &url).await;
            (status == 200 && body["checks"]["broadcast"] == json!("degraded")).then_some(())
        }
    })
    .await;
    // Back: both reconnect over TLS by themselves, and the bus carries again.
    redis.restart().await;
    for r in [&a, &b] {
        eventually(Duration::from_secs(15), "the bus to come back", || {
            let (c, base) = (c.clone(), r.base.clone());
            async move { (metric(&c, &base, bus).await == Some(1.0)).then_some(()) }
        })
        .await;
    }
    let seqs = ingest(&c, &a.base, "back", 4).await;
    assert_eq!(
        events_until(&mut ws, seqs[3], Duration::from_secs(5)).await,
        ((last + 1)..=seqs[3]).collect::<Vec<_>>()
    );
    eventually(Duration::from_secs(5), "b to receive over the bus again", || {
        let (c, base) = (c.clone(), b.base.clone());
        async move { metric(&c, &base, "sidewire_broadcast_received_total ").await.filter(|n| *n > received) }
    })
    .await;
    for r in [&a, &b] {
        let log = r.log();
        assert!(log.contains("redis bus connected again"), "{log}");
        for secret in [REDIS_PASSWORD, PG_PASSWORD] {
            assert!(!log.contains(secret), "a password was logged:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rediss_connection_with_the_wrong_ca_says_so_without_the_password() {
    let test = "a_rediss_connection_with_the_wrong_ca_says_so_without_the_password";
    let Some(bin) = TlsRedis::find(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(certs) = make_certs(test, dir.path()) else { return };
    let Some(db) = Db::create(test).await else { return };
    let redis = TlsRedis::start(bin, dir.path(), &certs).await;
    let config =
        replica_config(&db, &redis.url(), &certs.other_ca, &prefix("ca"), "[telemetry]\nlog_level = \"debug\"\n");
    let a = Replica::start(dir.path(), "a", &config);
    let log = eventually(Duration::from_secs(10), "the bus failure to be logged", || {
        let log = a.log();
        async move { log.contains("redis bus down").then_some(log) }
    })
    .await;
    let down = log.lines().find(|l| l.contains("redis bus down")).unwrap();
    assert!(down.contains("unknown CA") && down.contains("other-ca.pem") && down.contains("localhost"), "{down}");
    assert!(log.contains("DEBUG"), "not at debug level:\n{log}");
    // Ingest still works (the store is the truth) and the password is nowhere.
    ingest(&client(), &a.base, "ca", 2).await;
    let log = a.log();
    for secret in [REDIS_PASSWORD, PG_PASSWORD] {
        assert!(!log.contains(secret), "a password was logged:\n{log}");
    }
    // Insecure skips verification, with a warning at start.
    let insecure = replica_config(&db, &redis.url(), Path::new(""), &prefix("insecure"), "")
        .replace("prefix =", "redis_tls_insecure = true\nprefix =");
    let b = Replica::start(dir.path(), "b", &insecure);
    let log = eventually(Duration::from_secs(10), "the insecure bus to connect", || {
        let log = b.log();
        async move { log.contains("redis bus connected").then_some(log) }
    })
    .await;
    assert!(log.contains("certificate is NOT verified"), "{log}");
}
