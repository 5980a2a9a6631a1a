//! What several replicas need from the store they share, besides storing
//! events: the durable head, reads of committed ranges, the replicas'
//! heartbeat rows and commit notifications. The cluster (`crate::cluster`)
//! talks to this trait only; [`super::postgres::PostgresPlugin`] implements
//! it, and the sequencer's unit tests implement it in memory.

use super::PersistError;
use crate::event::Event;
use crate::stats::DurableStats;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// One live replica's heartbeat row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub name: String,
    pub active_connections: u64,
    pub messages_per_minute: u64,
}

/// What one replica writes into its heartbeat row.
#[derive(Debug, Clone, Copy)]
pub struct Beat<'a> {
    /// `server.replica_name`.
    pub name: &'a str,
    /// This process (tells two live replicas that share a name apart).
    pub instance: &'a str,
    pub active_connections: u64,
    pub messages_per_minute: u64,
    /// Rows older than this are not answered (dead replicas).
    pub expiry: Duration,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The rows seen within the expiry, this replica's included.
    pub live: Vec<ReplicaRow>,
    /// Which process wrote this name's row before this heartbeat.
    pub previous_instance: Option<String>,
}

/// Stored events of a range, with the stats that go with them.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// Oldest first, gauge reports included.
    pub events: Vec<Arc<Event>>,
    /// The store's stats, when they are known to cover no event beyond the
    /// durable head (else `None`: the caller keeps what it has).
    pub stats: Option<DurableStats>,
}

/// A session that hears of commits (LISTEN/NOTIFY for PostgreSQL).
#[async_trait]
pub trait Notifications: Send {
    /// The durable head a commit notified. An error ends the session (the
    /// connection broke or stopped answering its liveness probe).
    async fn next(&mut self) -> Result<u64, PersistError>;
}

/// The store that several replicas share.
///
/// # The durable head
/// Seqs are assigned by the store in its commits. A commit may become
/// visible before it is durable (see `persist::postgres`), so replicas
/// deliver, replay and fill only up to the *durable head*: the highest seq
/// such that every event up to it is committed and will survive a crash of
/// the store. It never goes back and has no holes below it.
#[async_trait]
pub trait SharedStore: Send + Sync + 'static {
    /// The durable head.
    async fn durable_head(&self) -> Result<u64, PersistError>;

    /// Stored events with `after < seq <= upto`, capped at the durable head
    /// (at most a page of them; ask again after the last one).
    async fn read_range(&self, after: u64, upto: u64) -> Result<Range, PersistError>;

    /// Writes this replica's heartbeat row and reads the live ones.
    async fn heartbeat(&self, beat: Beat<'_>) -> Result<Membership, PersistError>;

    /// Removes this replica's heartbeat row (a clean shutdown).
    async fn leave(&self, name: &str) -> Result<(), PersistError>;

    /// Opens a notification session on `channel` (the store's own bus).
    async fn listen(&self, channel: &str) -> Result<Box<dyn Notifications>, PersistError>;

    /// Where the store is, for log lines (no password).
    fn describe(&self) -> String;
}
