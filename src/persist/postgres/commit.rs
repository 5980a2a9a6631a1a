//! The group commit: one round trip, one short critical section.
//!
//! # One global order
//! Seqs are assigned by the store, inside the commit. Each group commit is
//! two transactions sent back to back on one connection (pipelined: one
//! round trip for both):
//!
//! 1. `sidewire_commit(...)` (a server-side function, see [`super::schema`])
//!    locks the single row of `sidewire_head`, refuses the group if any of
//!    its ids is stored (answering their seqs; the group is sent again
//!    without them), numbers the events after the head, inserts them, folds
//!    the group's stats delta into the stored stats and moves the head. It
//!    commits with `synchronous_commit = off`: the head lock is released as
//!    soon as the commit record is in the WAL buffer, not after its flush.
//!    The lock is held only while the server runs the function, with no
//!    client round trip and no fsync inside.
//! 2. `sidewire_durable(...)` reads the head and writes it into this
//!    replica's row of `sidewire_durable`, synchronously. Its flush covers
//!    every commit record before its own (the WAL is one sequential log),
//!    so once it returns, every event up to the head it read is durable.
//!    The rows are per replica: no two replicas wait on each other here,
//!    and PostgreSQL merges their flushes (group commit).
//!
//! The client is answered (202) and the batch is published only after step
//! 2 returned a head at or above the group's last seq.
//!
//! # Why this is correct
//! - Seqs become visible in commit order, never skip: the counter lives in
//!   the locked row, and a failed step 1 rolls it back. A crash of the
//!   database keeps a prefix of the WAL, so commits after the last flush
//!   vanish together, from some seq on: never a hole.
//! - Rows may be visible before they are durable, so nothing reads past the
//!   *durable head* (the highest `sidewire_durable.upto`): gap fills, head
//!   checks, replays and activity queries stop there. A seq shown to a
//!   dashboard is durable, so it is never given to another event.
//! - The dedupe check runs under the head lock: exact, also for the same
//!   id on two replicas at once (the unique index stays as a safety net).
//!   A duplicate of a committed but not yet durable event answers that
//!   event's seq only after step 2 made it durable.
//! - The stats row is written in the same transaction as the events, so
//!   counters, `eventsByType` and `lastSeq` always agree with the events.
//!
//! # Where the ceiling is
//! Commits are still serial across the cluster, but the serial part is the
//! function's run time (the id lookup, a multi-row insert, the stats merge;
//! well under a millisecond for a group of a few hundred events), not round
//! trips and an fsync. Each replica numbers one group at a time; everything
//! that queued meanwhile is the next group. After a big group, the next
//! group's step 1 is sent as soon as this one's step 1 has answered
//! (`NewBatch::numbered`), so it overlaps this one's durable step instead of
//! waiting for its flush.

use super::{db_err, deadline, err, parse_stats, PostgresPlugin, CALL_TIMEOUT, RETRY_INTERVAL};
use crate::event::{Event, NewEvent};
use crate::persist::{AssignsSeqs, Batch, Committed, NewBatch, PersistError};
use crate::stats::DurableStats;
use async_trait::async_trait;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

const COMMIT: &str = "SELECT first_seq, dup_ids, dup_seqs, new_stats FROM sidewire_commit($1, $2, $3, $4, $5, $6, $7)";
const DURABLE: &str = "SELECT sidewire_durable($1, $2)";

/// The columns of a group for `sidewire_commit`, one array per column.
#[derive(Default)]
struct Columns<'a> {
    kinds: Vec<&'a str>,
    ts_ms: Vec<i64>,
    ids: Vec<Option<&'a str>>,
    sources: Vec<Option<&'a str>>,
    datas: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, e: &'a NewEvent) {
        self.kinds.push(&e.kind);
        self.ts_ms.push(e.timestamp.timestamp_millis());
        self.ids.push(e.id.as_deref());
        self.sources.push(e.source.as_deref());
        self.datas.push(&e.data_json);
    }
}

impl PostgresPlugin {
    /// One group commit (see the module docs), under the call deadline.
    pub(super) async fn commit(&self, batch: &NewBatch<'_>) -> Result<Committed, PersistError> {
        let client = deadline("commit", self.client()).await?;
        let work = commit_group(&client, batch, &self.replica, self.notify_channel.as_deref());
        let result = tokio::time::timeout(CALL_TIMEOUT, work).await;
        self.finish(client, "commit", result)
    }

    /// Fails at once while the last write failed less than
    /// [`RETRY_INTERVAL`] ago.
    pub(super) fn fail_fast(&self) -> Result<(), PersistError> {
        if let Some(at) = *self.failed_at.lock() {
            if at.elapsed() < RETRY_INTERVAL {
                return Err(err("the database was unreachable a moment ago; retry later"));
            }
        }
        Ok(())
    }

    pub(super) fn note_write(&self, result: &Result<Committed, PersistError>) {
        let mut failed = self.failed_at.lock();
        match result {
            Err(PersistError::Unavailable { .. }) => *failed = Some(Instant::now()),
            _ => *failed = None,
        }
    }
}

/// Step 2 alone: the durable head as this replica's row now records it.
async fn make_durable(
    c: &deadpool_postgres::Object,
    replica: &str,
    channel: Option<&str>,
) -> Result<u64, PersistError> {
    let durable = c.prepare_cached(DURABLE).await.map_err(db_err)?;
    let row = c.query_one(&durable, &[&replica, &channel]).await.map_err(db_err)?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

async fn commit_group(
    c: &deadpool_postgres::Object,
    batch: &NewBatch<'_>,
    replica: &str,
    channel: Option<&str>,
) -> Result<Committed, PersistError> {
    let n = batch.events.len();
    // An event that repeats an id earlier in the group answers that one's seq.
    let mut first_at: HashMap<&str, usize> = HashMap::new();
    let mut repeat_of: Vec<Option<usize>> = vec![None; n];
    for (i, e) in batch.events.iter().enumerate() {
        if let Some(id) = e.id.as_deref() {
            match first_at.entry(id) {
                Entry::Occupied(o) => repeat_of[i] = Some(*o.get()),
                Entry::Vacant(v) => {
                    v.insert(i);
                }
            }
        }
    }
    // Ids the store turned out to hold, with their seqs.
    let mut in_store: HashMap<String, u64> = HashMap::new();
    let commit = c.prepare_cached(COMMIT).await.map_err(db_err)?;
    let durable = c.prepare_cached(DURABLE).await.map_err(db_err)?;
    loop {
        let fresh = |i: &usize| {
            repeat_of[*i].is_none() && batch.events[*i].id.as_deref().is_none_or(|id| !in_store.contains_key(id))
        };
        let new: Vec<usize> = (0..n).filter(fresh).collect();
        if new.is_empty() {
            // Only duplicates: their seqs must be durable before they are
            // answered (step 2 of the attempt that found them did that,
            // unless there was none).
            if in_store.is_empty() {
                make_durable(c, replica, channel).await?;
            }
            return Ok(assemble(batch, &repeat_of, &in_store, &new, 0, DurableStats::default()));
        }
        let now = crate::event::now_ms();
        let mut delta = DurableStats::default();
        let mut cols = Columns::default();
        for &i in &new {
            let e = batch.events[i];
            delta.apply_at(0, e, batch.counters, now);
            cols.push(e);
        }
        let delta = serde_json::to_string(&delta).map_err(err)?;
        let stored_ms = now.timestamp_millis();
        let args1: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&cols.kinds, &cols.ts_ms, &cols.ids, &cols.sources, &cols.datas, &stored_ms, &delta];
        let args2: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&replica, &channel];
        let step1 = async {
            let row = c.query_one(&commit, &args1).await;
            // Numbered and committed (not refused for duplicates): the head
            // lock is free, the next group may go while this one flushes.
            if let (Ok(row), Some(numbered)) = (&row, batch.numbered) {
                if row.get::<_, i64>(0) > 0 {
                    numbered();
                }
            }
            row
        };
        // Sent right behind step 1 on the same connection: it runs after
        // step 1 has committed.
        let step2 = c.query_one(&durable, &args2);
        let (row, head) = futures::join!(step1, step2);
        let row = row.map_err(db_err)?;
        let mut head = head.map_err(db_err)?.get::<_, i64>(0).max(0) as u64;
        if let Some(ids) = row.get::<_, Option<Vec<String>>>(1) {
            let seqs: Vec<i64> = row.get(2);
            in_store.extend(ids.into_iter().zip(seqs.into_iter().map(|s| s.max(0) as u64)));
            continue;
        }
        let first = row.get::<_, i64>(0).max(0) as u64;
        let last = first + new.len() as u64 - 1;
        if head < last {
            // Cannot happen with one connection's requests run in order;
            // never answer before the group is durable, whatever happened.
            head = make_durable(c, replica, channel).await?;
            if head < last {
                return Err(err(format!("the durable head {head} is below the committed seq {last}")));
            }
        }
        let stats = parse_stats(row.get(3))?.unwrap_or_default();
        return Ok(assemble(batch, &repeat_of, &in_store, &new, first, stats));
    }
}

/// The answer for a committed group: `new` (indexes into the group) were
/// stored from seq `first` on; the others repeat an earlier event of the
/// group or an id of the store.
fn assemble(
    batch: &NewBatch<'_>,
    repeat_of: &[Option<usize>],
    in_store: &HashMap<String, u64>,
    new: &[usize],
    first: u64,
    stats: DurableStats,
) -> Committed {
    let n = batch.events.len();
    let mut seqs = vec![0u64; n];
    let mut stored = vec![false; n];
    let mut events = Vec::with_capacity(new.len());
    let mut next = new.iter().peekable();
    for i in 0..n {
        if next.peek() == Some(&&i) {
            next.next();
            let seq = first + events.len() as u64;
            seqs[i] = seq;
            stored[i] = true;
            events.push(Arc::new(Event::from_new(seq, batch.events[i])));
        } else if let Some(j) = repeat_of[i] {
            seqs[i] = seqs[j];
        } else if let Some(seq) = batch.events[i].id.as_deref().and_then(|id| in_store.get(id)) {
            seqs[i] = *seq;
        }
    }
    Committed { seqs, stored, batch: Batch { events, stats: Arc::new(stats) } }
}

/// Fails fast after a failed write (see the `postgres` module's faults).
#[async_trait]
impl AssignsSeqs for PostgresPlugin {
    async fn persist_new(&self, batch: &NewBatch<'_>) -> Result<Committed, PersistError> {
        self.fail_fast()?;
        let result = self.commit(batch).await;
        self.note_write(&result);
        result
    }
}
