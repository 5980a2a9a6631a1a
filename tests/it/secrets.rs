//! Secrets stay typed until the socket: no password or token reaches a
//! `{:?}`, a `{}` or a log line (issue 18). Every config-bearing value built
//! from a config with credentials in every URL and token is formatted and
//! searched; then the binary runs at `log_level = "debug"` against
//! unreachable and refusing PostgreSQL, Redis and webhook endpoints with
//! passwords in their URLs, and its whole output is searched.

use crate::common::{client, refused_port};
use sidewire::cluster::ClusterOptions;
use sidewire::config::Config;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRETS: &[&str] =
    &["pg-s3cret-pw", "redis-s3cret-pw", "hook-s3cret-pw", "ingest-tok3n", "dash-tok3n", "qkey-s3cret"];

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows the secret {s:?}:\n{text}");
    }
}

fn config_with_secrets(backend: &str) -> Config {
    let text = format!(
        r#"
[auth]
ingest_tokens = ["ingest-tok3n-1"]
dashboard_tokens = ["dash-tok3n-1"]
[persist]
plugin = "postgres"
postgres_url = "postgres://app:pg-s3cret-pw@db.example:5432/sidewire?application_name=x"
webhook_url = "https://hook:hook-s3cret-pw@hooks.example/in?key=qkey-s3cret"
[broadcast]
backend = "{backend}"
redis_url = "redis://user:redis-s3cret-pw@cache.example:6379/0"
"#
    );
    Config::from_toml(&text, &[]).unwrap_or_else(|e| panic!("{e:?}"))
}

#[tokio::test]
async fn no_config_bearing_value_formats_a_secret() {
    for backend in ["redis", "postgres", "local"] {
        let config = config_with_secrets(backend);
        assert_clean("Config {:?}", &format!("{config:?}"));
        assert_clean("Config {:#?}", &format!("{config:#?}"));
        let p = &config.persist;
        assert_clean("postgres_url {}", &format!("{} {:?}", p.postgres_url, p.postgres_url));
        assert_clean("webhook_url {}", &format!("{} {:?}", p.webhook_url, p.webhook_url));
        let r = &config.broadcast.redis_url;
        assert_clean("redis_url {}", &format!("{r} {r:?}"));
        for t in &config.auth.ingest_tokens {
            assert_clean("a token", &format!("{t} {t:?}"));
        }
        let pg = sidewire::persist::postgres_options(&config, "r1");
        assert_clean("PostgresOptions", &format!("{pg:?} {pg:#?}"));
        let plugin = sidewire::persist::postgres::PostgresPlugin::new(pg).unwrap();
        assert_clean("PostgresPlugin", &format!("{plugin:?}"));
        let hook = sidewire::persist::webhook_options(&config);
        assert_clean("WebhookOptions", &format!("{hook:?} {hook:#?}"));
        let hook = sidewire::persist::webhook::WebhookPlugin::new(hook).unwrap();
        assert_clean("WebhookPlugin", &format!("{hook:?}"));
        let cluster = ClusterOptions::from_config(&config, 8790);
        assert_clean("ClusterOptions", &format!("{cluster:?} {cluster:#?} {:?}", cluster.bus));
    }
}

/// A loopback listener that accepts and closes at once (a refusing server
/// at the protocol level), for as long as the returned task runs.
async fn slammer() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    (port, task)
}

/// Runs `sidewire serve` with `toml` for at most `secs` (or until it exits)
/// and answers everything it wrote; `poke` runs against it meanwhile.
async fn run_and_read(dir: &Path, toml: &str, secs: u64) -> String {
    let cfg = dir.join("sidewire.toml");
    std::fs::write(&cfg, toml).unwrap();
    let log = dir.join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidewire"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir)
        .env_remove("SIDEWIRE_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let c = client();
    let mut poked = false;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let (false, Some(addr)) = (poked, crate::common::listening_addr(&text)) {
            poked = true;
            // One ingest (webhook: a failing persist) and a readiness check.
            let _ = c
                .post(format!("http://{addr}/api/v1/ingest"))
                .header("authorization", "Bearer ingest-tok3n-1")
                .header("content-type", "application/json")
                .body(r#"{"type": "query_complete", "data": {}}"#)
                .send()
                .await;
            let _ = c.get(format!("http://{addr}/readyz")).send().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_debug_log_of_failing_connections() {
    let (refused, _hold) = refused_port();
    let (slam, _slam_task) = slammer().await;
    let dir = tempfile::tempdir().unwrap();
    let head = "[server]\nlisten = \"127.0.0.1:0\"\n[telemetry]\nlog_level = \"debug\"\n\
                [auth]\ningest_tokens = [\"ingest-tok3n-1\"]\ndashboard_tokens = [\"dash-tok3n-1\"]\n";
    for port in [refused, slam] {
        // PostgreSQL unreachable / refusing: the start fails, and says why.
        let toml = format!(
            "{head}[persist]\nplugin = \"postgres\"\n\
             postgres_url = \"postgres://app:pg-s3cret-pw@127.0.0.1:{port}/sidewire\"\n"
        );
        let out = run_and_read(dir.path(), &toml, 15).await;
        assert!(out.contains("127.0.0.1"), "the failure names the host:\n{out}");
        assert_clean("the log of a failing PostgreSQL", &out);

        // Webhook unreachable / refusing: the ingest fails.
        let toml = format!(
            "{head}[persist]\nplugin = \"webhook\"\nwebhook_max_retries = 0\n\
             webhook_url = \"http://hook:hook-s3cret-pw@127.0.0.1:{port}/in?key=qkey-s3cret\"\n"
        );
        let out = run_and_read(dir.path(), &toml, 4).await;
        assert!(out.contains("sidewire listening"), "{out}");
        assert_clean("the log of a failing webhook", &out);
    }
    // Redis unreachable / refusing, on a reachable PostgreSQL.
    let Some(db) = crate::common::services::Db::create("no_secret_in_the_debug_log_of_failing_connections").await
    else {
        return;
    };
    for port in [refused, slam] {
        let toml = format!(
            "{head}[persist]\nplugin = \"postgres\"\npostgres_url = \"{}\"\n\
             [broadcast]\nbackend = \"redis\"\nprefix = \"swit-secrets-{port}\"\n\
             redis_url = \"redis://user:redis-s3cret-pw@127.0.0.1:{port}/0\"\n",
            db.url(5432).replace("not-the-password", "pg-s3cret-pw")
        );
        let out = run_and_read(dir.path(), &toml, 5).await;
        assert!(out.contains("redis bus down"), "the bus failure is logged:\n{out}");
        assert_clean("the log of a failing Redis", &out);
    }
}
