//! Delivers the cluster's batches to this replica in seq order, exactly
//! once, filling gaps from the store (see the [module docs](super)).

use super::Input;
use crate::hub::Delivery;
use crate::log_throttle::Repeated;
use crate::metrics::Metrics;
use crate::persist::postgres::PostgresPlugin;
use crate::persist::Batch;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a gap may wait for the bus before it is read from the store.
/// Batches of other replicas usually arrive within a millisecond; a gap
/// older than this was lost on the way.
pub const GAP_GRACE: Duration = Duration::from_millis(150);
/// The sequencer's timer: gap deadlines, and the store's head check while
/// the bus is down (events then arrive within about this).
pub const TICK: Duration = Duration::from_millis(250);
/// The head check while the bus is up (catches silent loss). Two checks
/// in a row must see the head above the delivered seq before it is filled,
/// so an event the bus lost still arrives within about 1.3 s, also while a
/// stalled bus is not yet noticed (within 2 s of its 202, as CONTRACT §8
/// asks while Redis is down).
pub const HEAD_CHECK: Duration = Duration::from_millis(500);
/// Most batches held while waiting for a gap (beyond: fill now).
const MAX_PENDING: usize = 1024;

pub(crate) struct Sequencer {
    store: Arc<PostgresPlugin>,
    delivery: Delivery,
    metrics: Arc<Metrics>,
    /// The last seq delivered here.
    delivered: u64,
    /// Batches further ahead, by first seq.
    pending: BTreeMap<u64, Batch>,
    /// Since when the oldest gap waits.
    gap_since: Option<Instant>,
    /// The head the previous check saw above `delivered`.
    head_seen: Option<u64>,
    /// Own commits go out on the bus (Redis) through this.
    publisher: Option<mpsc::Sender<Batch>>,
}

impl Sequencer {
    pub(crate) fn new(
        store: Arc<PostgresPlugin>,
        delivery: Delivery,
        metrics: Arc<Metrics>,
        delivered: u64,
        publisher: Option<mpsc::Sender<Batch>>,
    ) -> Self {
        Sequencer {
            store,
            delivery,
            metrics,
            delivered,
            pending: BTreeMap::new(),
            gap_since: None,
            head_seen: None,
            publisher,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Input>, bus_up: Arc<AtomicBool>, has_bus: bool) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = Instant::now();
        loop {
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    match input {
                        Input::Local(batch) => {
                            if let Some(p) = &self.publisher {
                                if p.try_send(batch.clone()).is_err() {
                                    tracing::debug!("bus publish queue full; other replicas fill the gap from the store");
                                }
                            }
                            self.offer(batch);
                        }
                        Input::Remote(batch) => {
                            self.metrics.broadcast_received_total.inc_by(batch.events.len() as u64);
                            self.offer(batch);
                        }
                        Input::Notified(upto) => {
                            if upto > self.delivered {
                                self.fill(upto, false).await;
                            }
                        }
                        Input::BusUp(true) => {
                            // What was published while the bus was away is
                            // gone: check the store now.
                            self.head_seen = None;
                            self.check_head(true).await;
                            last_check = Instant::now();
                        }
                        Input::BusUp(false) => {}
                    }
                }
                _ = tick.tick() => {
                    if self.gap_since.is_some_and(|t| t.elapsed() >= GAP_GRACE) || self.pending.len() > MAX_PENDING {
                        let upto = self.pending.keys().next().map_or(self.delivered, |first| first - 1);
                        self.fill(upto, true).await;
                    }
                    // A configured bus that is down: check often and fill at
                    // once (the store is the only way events arrive).
                    let degraded = has_bus && !bus_up.load(Ordering::SeqCst);
                    let every = if degraded { TICK } else { HEAD_CHECK };
                    if last_check.elapsed() >= every {
                        last_check = Instant::now();
                        self.check_head(degraded).await;
                    }
                }
            }
        }
    }

    /// Delivers `batch` if it continues the delivered seqs, keeps it if it
    /// is ahead, drops what was delivered already.
    fn offer(&mut self, mut batch: Batch) {
        let Some(last) = batch.events.last().map(|e| e.seq) else { return };
        if last <= self.delivered {
            return; // delivered already (own batch back from the bus, or filled)
        }
        let first = batch.events[0].seq;
        if first > self.delivered + 1 {
            self.gap_since.get_or_insert_with(Instant::now);
            self.pending.entry(first).or_insert(batch);
            return;
        }
        batch.events.retain(|e| e.seq > self.delivered);
        self.deliver(batch);
        self.drain();
    }

    /// Delivers the waiting batches that now continue the seqs.
    fn drain(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > self.delivered + 1 {
                break;
            }
            let mut batch = entry.remove();
            batch.events.retain(|e| e.seq > self.delivered);
            if !batch.events.is_empty() {
                self.deliver(batch);
            }
        }
        self.gap_since = if self.pending.is_empty() { None } else { Some(Instant::now()) };
    }

    fn deliver(&mut self, batch: Batch) {
        if let Some(last) = batch.events.last() {
            self.delivered = last.seq;
            self.delivery.deliver(&batch);
        }
    }

    /// Reads the seqs after the delivered ones up to `upto` from the store
    /// and delivers them; `gap`: counted as a gap fill.
    async fn fill(&mut self, upto: u64, gap: bool) {
        if upto <= self.delivered {
            self.drain();
            return;
        }
        if gap {
            self.metrics.broadcast_gap_fills_total.inc();
            tracing::debug!(from = self.delivered + 1, upto, "filling a gap from the store");
        }
        while self.delivered < upto {
            match self.store.read_range(self.delivered, upto).await {
                Ok((events, stats)) => {
                    if events.is_empty() {
                        // Every seq up to `upto` is committed (it was seen
                        // after them); none left means they were removed
                        // (retention): nothing to wait for.
                        self.delivered = upto;
                        break;
                    }
                    // The stats as they stood at the read (possibly a little
                    // ahead of these events; never taken when older than
                    // what the replica shows, see `Stats::commit`).
                    let stats = Arc::new(stats.unwrap_or_default());
                    self.deliver(Batch { events, stats });
                }
                Err(e) => {
                    if let Some(suppressed) = self.metrics.repeated.hit(Repeated::PersistFailed) {
                        tracing::warn!(error = %e, suppressed, "cannot read missed events from the store; retrying");
                    }
                    return;
                }
            }
        }
        self.drain();
    }

    /// Compares the store's head with the delivered seq. `now`: fill at
    /// once; else only a head already seen above on the previous check (the
    /// bus had a full interval to bring it).
    async fn check_head(&mut self, now: bool) {
        let head = match self.store.head().await {
            Ok((head, _)) => head,
            Err(e) => {
                if let Some(suppressed) = self.metrics.repeated.hit(Repeated::PersistFailed) {
                    tracing::warn!(error = %e, suppressed, "cannot read the store's head");
                }
                return;
            }
        };
        if head <= self.delivered {
            self.head_seen = None;
            return;
        }
        match self.head_seen {
            _ if now => self.fill(head, true).await,
            Some(seen) if seen > self.delivered => self.fill(seen, true).await,
            _ => {}
        }
        self.head_seen = (head > self.delivered).then_some(head);
    }
}
