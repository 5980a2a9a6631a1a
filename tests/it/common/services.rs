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
        let dsn = format!("host=127.0.0.1 port=5432 user=postgres dbname={}", self.name);
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.query_one(sql, &[]).await.unwrap().get(0)
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
