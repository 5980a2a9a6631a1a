//! The machine's PostgreSQL and Redis for the tests that need them: a
//! database of a test's own (dropped afterwards), a Redis reachability check,
//! and a TCP proxy to simulate outages without touching the services.
//! Missing services skip the test with a printed reason, unless
//! `SIDEWIRE_TEST_REQUIRE` lists `postgres`/`redis` (see [`super::external`]).
#![allow(dead_code)]

use super::external;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";
pub const REDIS: &str = "127.0.0.1:6379";

pub static NEXT: AtomicU64 = AtomicU64::new(0);

/// A database of this test's own, dropped on drop.
pub struct Db {
    pub name: String,
}

impl Db {
    /// `None` (after printing why) when PostgreSQL is not reachable and not required.
    pub async fn create(test: &str) -> Option<Db> {
        let admin = match tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
            }
            Err(e) => {
                assert!(!external::is_required("postgres"), "{test}: PostgreSQL required but unreachable: {e}");
                external::skip(test, &format!("PostgreSQL at 127.0.0.1:5432 is unreachable ({e})"));
                return None;
            }
        };
        let name = format!("sw_it_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        Some(Db { name })
    }

    pub fn url(&self, port: u16) -> String {
        format!("postgres://postgres:not-the-password@127.0.0.1:{port}/{}", self.name)
    }

    pub async fn query_one_i64(&self, sql: &str) -> i64 {
        self.connect().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    pub async fn query_one_string(&self, sql: &str) -> String {
        self.connect().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Runs `sql` (several statements allowed) in this database.
    pub async fn execute(&self, sql: &str) {
        self.connect().await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn connect(&self) -> tokio_postgres::Client {
        let dsn = format!("host=127.0.0.1 port=5432 user=postgres dbname={}", self.name);
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A plain thread: drop may run outside a runtime or inside one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            })
        })
        .join();
    }
}

/// Whether Redis answers; prints why a test skips when it does not.
pub async fn redis_up(test: &str) -> bool {
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(REDIS)).await {
        Ok(Ok(_)) => true,
        other => {
            assert!(!external::is_required("redis"), "{test}: Redis required but unreachable: {other:?}");
            external::skip(test, "Redis at 127.0.0.1:6379 is unreachable");
            false
        }
    }
}

/// A TCP proxy in front of a service, that the test can cut (close every
/// connection and refuse new ones), stall (keep connections open but pass
/// no byte: a hung server or a black-holed network) and restore.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    /// Connections being relayed.
    open: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let stalled = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let (u, st, g, o) = (up.clone(), stalled.clone(), generation.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (u, st, g, o) = (u.clone(), st.clone(), g.clone(), o.clone());
                let born = g.load(Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    struct Closed(Arc<AtomicU64>);
                    impl Drop for Closed {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _closed = Closed(o);
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let (mut ir, mut iw) = inbound.into_split();
                    let (mut or, mut ow) = outbound.into_split();
                    let copy = async {
                        tokio::join!(relay(&mut ir, &mut ow, &st), relay(&mut or, &mut iw, &st));
                    };
                    let cut = async {
                        while u.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Proxy { port, up, stalled, generation, open }
    }

    /// Passes no byte in either direction until [`restore`](Self::restore),
    /// keeping every connection open (and accepting new ones).
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Refuses new connections and closes the relayed ones; returns once
    /// they are all closed.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        while self.open.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn restore(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding each chunk while `stalled`.
async fn relay(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    stalled: &AtomicBool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A PostgreSQL server of this test's own (`initdb` + `pg_ctl` of the
/// installed server, on a free port, data in a temporary directory), for a
/// test that must crash or restart the database. Run as the `postgres` user
/// when the test runs as root (initdb refuses root). Stopped on drop.
pub struct OwnPostgres {
    pub port: u16,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
}

impl OwnPostgres {
    /// `None` (after printing why) when no PostgreSQL server is installed
    /// and `postgres` is not required.
    pub fn start(test: &str) -> Option<OwnPostgres> {
        let Some(bin) = postgres_bindir() else {
            assert!(!external::is_required("postgres"), "{test}: PostgreSQL required but initdb/pg_ctl not found");
            external::skip(test, "no PostgreSQL server installed (initdb, pg_ctl)");
            return None;
        };
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            let out = std::process::Command::new("id").args(["-u", "postgres"]).output().unwrap();
            let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a postgres user");
            let out = std::process::Command::new("id").args(["-g", "postgres"]).output().unwrap();
            let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pg = OwnPostgres { port, bin, dir, as_postgres };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = cmd.args(args).current_dir(self.dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (after a crash: with recovery) and waits for it.
    pub fn start_server(&self) {
        let data = self.data();
        let log = self.dir.path().join("server.log").to_string_lossy().into_owned();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=60",
            self.port,
            self.dir.path().display()
        );
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start"]);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kill -9` of the postmaster and every process it started, as a crash
    /// would leave them; returns once they are gone.
    pub fn kill9(&self) {
        let pidfile = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).unwrap();
        let pid: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
        let children = children_of(pid);
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for c in &children {
            unsafe { libc::kill(*c, libc::SIGKILL) };
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::iter::once(pid).chain(children.iter().copied()).any(alive) {
            assert!(std::time::Instant::now() < deadline, "postgres processes did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A URL for `db` on this server (the password is never checked: trust).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres:not-the-password@127.0.0.1:{}/{db}", self.port)
    }

    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let dsn = format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5", self.port);
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let path = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
    }
}

/// The newest installed server's bin directory (Debian's layout, else
/// `pg_config --bindir`).
fn postgres_bindir() -> Option<std::path::PathBuf> {
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let out = std::process::Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some(bin)
}

/// Processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let child: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces.
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid: i32 = rest.split(' ').nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()).is_some_and(|s| s != 'Z'),
        Err(_) => false,
    }
}
