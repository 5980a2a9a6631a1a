//! The shared store for several replicas: PostgreSQL (CONTRACT section 8).
//!
//! One file per concern: [`schema`] (versioned migrations and the
//! server-side functions), [`commit`] (the group commit: one round trip,
//! store-assigned seqs, the durable head), [`query`] (activity, resume,
//! committed ranges), [`retention`], [`transfer`] (export and import),
//! [`replicas`] (heartbeat rows and the [`SharedStore`] the cluster talks
//! to) and [`notify`] (LISTEN/NOTIFY for the `postgres` bus). This file holds
//! the pool and the call discipline.
//!
//! # Faults
//! Every call has a deadline ([`CALL_TIMEOUT`]); a connection that timed out
//! is dropped, not returned to the pool. After a failed write, writes fail
//! fast (without waiting for a stalled server) except for one attempt per
//! [`RETRY_INTERVAL`], so ingest answers 503 at once while the database is
//! away and recovers by itself.
//!
//! [`SharedStore`]: super::shared::SharedStore

mod commit;
mod notify;
mod query;
mod replicas;
mod retention;
mod schema;
mod transfer;

use super::Batch;
use super::{AssignsSeqs, PersistCallback, PersistError, Query, Recovered, Retain, Transfer};
use crate::config::SecretUrl;
use crate::event::Event;
use crate::retention::Retention;
use crate::stats::DurableStats;
use crate::tls::postgres::{MakeRustls, PgTarget};
use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Row;

const NAME: &str = "postgres";

/// Deadline of one call (a connection from the pool, the statements, the
/// commit). A stalled server fails the call after this.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed write, at most one write attempt per this interval; the
/// others fail at once.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Events per page of an export read or a replay.
const PAGE: i64 = 1_000;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/db` (or key=value form);
    /// exposed only to build the connection settings.
    pub url: SecretUrl,
    /// Most connections this replica opens.
    pub pool_size: usize,
    /// `broadcast.backend = "postgres"`: the channel each commit notifies
    /// (`NOTIFY` in the durable step, in commit order) with the durable head.
    pub notify_channel: Option<String>,
    /// This replica's name (`server.replica_name`): its row of durable
    /// heads (see [`commit`]).
    pub replica: String,
}

/// The `postgres` plugin. Cheap to share (`Arc`); the cluster code uses the
/// same pool for heartbeats and replays.
pub struct PostgresPlugin {
    pool: Pool,
    config: tokio_postgres::Config,
    /// The URL's TLS settings (libpq's `sslmode`, `sslrootcert`, …) and the
    /// connector built from them, shared with the LISTEN connection.
    target: PgTarget,
    tls: MakeRustls,
    notify_channel: Option<String>,
    replica: String,
    /// See [`Retain::retention_floor`].
    floor: AtomicU64,
    /// When the last write failed (writes fail fast until the next attempt).
    failed_at: Mutex<Option<Instant>>,
    /// The retention cutoff planned for a policy (reused by one pass).
    plan: Mutex<Option<(Retention, u64)>>,
    /// For log lines: the URL without its password.
    redacted: String,
}

impl std::fmt::Debug for PostgresPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPlugin").field("url", &self.redacted).finish()
    }
}

pub(super) fn err(e: impl std::fmt::Display) -> PersistError {
    PersistError::unavailable(NAME, e)
}

/// A database error with its SQLSTATE and detail (tokio-postgres' own
/// Display says only "db error").
pub(super) fn db_err(e: tokio_postgres::Error) -> PersistError {
    match e.as_db_error() {
        Some(db) => err(format!(
            "{} ({}){}",
            db.message(),
            db.code().code(),
            match db.detail() {
                Some(d) => format!(": {d}"),
                None => String::new(),
            }
        )),
        // tokio-postgres' own Display is only the first link ("error
        // communicating with the server"): say the cause too.
        None => err(crate::tls::postgres::chain(&e)),
    }
}

pub(super) fn corrupt(message: impl Into<String>) -> PersistError {
    PersistError::Corrupt { plugin: NAME, message: message.into() }
}

/// Runs `f` with the call deadline.
pub(super) async fn deadline<T>(
    what: &str,
    f: impl Future<Output = Result<T, PersistError>>,
) -> Result<T, PersistError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(err(format!("{what}: no answer from PostgreSQL within {} s", CALL_TIMEOUT.as_secs()))),
    }
}

impl PostgresPlugin {
    /// Builds the pool; connects lazily (the first call, [`recover`], also
    /// migrates the schema).
    ///
    /// [`recover`]: PersistCallback::recover
    pub fn new(options: PostgresOptions) -> Result<PostgresPlugin, PersistError> {
        let redacted = options.url.to_string();
        let invalid =
            |e: String| PersistError::Unavailable { plugin: NAME, message: format!("persist.postgres_url: {e}") };
        // The one place the URL is exposed: the connection settings.
        let target = crate::tls::postgres::parse(options.url.expose()).map_err(invalid)?;
        let tls = target.tls.connector().map_err(invalid)?;
        let mut config = target.config.clone();
        config.connect_timeout(CALL_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("sidewire");
        }
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(err)?;
        Ok(PostgresPlugin {
            pool,
            config,
            target,
            tls,
            notify_channel: options.notify_channel,
            replica: options.replica,
            floor: AtomicU64::new(0),
            failed_at: Mutex::new(None),
            plan: Mutex::new(None),
            redacted,
        })
    }

    /// The URL without its password.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// A connection error in words: a TLS failure with host, sslmode and
    /// what failed; anything else with its causes.
    pub fn describe(&self, e: &tokio_postgres::Error) -> String {
        self.target.describe(e)
    }

    /// A pooled connection, or the reason there is none.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, PersistError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) if e.as_db_error().is_none() => err(self.describe(&e)),
            deadpool_postgres::PoolError::Backend(e) => db_err(e),
            deadpool_postgres::PoolError::Timeout(_) => {
                err(format!("no connection to {} within {} s", self.redacted, CALL_TIMEOUT.as_secs()))
            }
            other => err(format!("{}: {other}", self.redacted)),
        })
    }

    /// Runs `f` on a pooled connection under the call deadline. A
    /// connection whose call timed out or broke is not reused.
    pub(super) async fn with<T, F>(&self, what: &str, f: F) -> Result<T, PersistError>
    where
        F: for<'c> FnOnce(&'c mut deadpool_postgres::Object) -> futures::future::BoxFuture<'c, Result<T, PersistError>>,
    {
        let mut client = deadline(what, self.client()).await?;
        let result = tokio::time::timeout(CALL_TIMEOUT, f(&mut client)).await;
        self.finish(client, what, result)
    }

    /// The end of a call: a connection whose call timed out or broke is not
    /// reused.
    pub(super) fn finish<T>(
        &self,
        client: deadpool_postgres::Object,
        what: &str,
        result: Result<Result<T, PersistError>, tokio::time::error::Elapsed>,
    ) -> Result<T, PersistError> {
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if client.is_closed() {
                    let _ = deadpool_postgres::Object::take(client);
                }
                Err(e)
            }
            Err(_) => {
                // The statement may still be running: do not hand this
                // connection to anyone else.
                let _ = deadpool_postgres::Object::take(client);
                Err(err(format!("{what}: no answer from PostgreSQL within {} s", CALL_TIMEOUT.as_secs())))
            }
        }
    }
}

pub(super) fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

pub(super) fn parse_stats(text: Option<String>) -> Result<Option<DurableStats>, PersistError> {
    text.map(|t| serde_json::from_str::<DurableStats>(&t).map_err(|e| corrupt(format!("stored stats: {e}"))))
        .transpose()
}

pub(super) fn row_to_event(r: &Row) -> Arc<Event> {
    let seq: i64 = r.get(0);
    let kind: &str = r.get(1);
    let ts: i64 = r.get(2);
    let id: Option<&str> = r.get(3);
    let source: Option<&str> = r.get(4);
    let data: &str = r.get(5);
    let ts = Utc.timestamp_millis_opt(ts).single().unwrap_or_default();
    Arc::new(Event::new(seq.max(0) as u64, kind, ts, id, source, data))
}

#[async_trait]
impl PersistCallback for PostgresPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Migrates the schema, then reports the durable head: events above it
    /// (committed, not yet durable) are not this replica's history.
    async fn recover(&self) -> Result<Recovered, PersistError> {
        self.migrate().await?;
        let (_, stats) = self.head().await?;
        let last_seq = self.read_durable_head().await?;
        Ok(Recovered { stats, last_seq, ..Default::default() })
    }

    /// Ingest always comes through [`AssignsSeqs::persist_new`]; this
    /// stores already sequenced events (which only an import makes).
    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        Transfer::import(self, batch).await
    }

    async fn health(&self) -> Result<(), PersistError> {
        self.with("health check", move |c| {
            Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()).map_err(db_err) })
        })
        .await
    }

    async fn close(&self) -> Result<(), PersistError> {
        self.pool.close();
        Ok(())
    }

    fn as_query(&self) -> Option<&dyn Query> {
        Some(self)
    }

    fn as_retention(&self) -> Option<&dyn Retain> {
        Some(self)
    }

    fn as_transfer(&self) -> Option<&dyn Transfer> {
        Some(self)
    }

    /// Dedupe is whole-store too, in the same commit (no [`super::Dedupe`]).
    fn as_sequencing(&self) -> Option<&dyn AssignsSeqs> {
        Some(self)
    }
}
