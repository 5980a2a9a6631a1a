//! Delivers the cluster's batches to this replica in seq order, exactly
//! once, filling gaps from the store (see the [module docs](super)).

use super::Input;
use crate::hub::Delivery;
use crate::internal_events::StoreReadFailed;
use crate::metrics::Metrics;
use crate::persist::shared::SharedStore;
use crate::persist::Batch;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

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
    store: Arc<dyn SharedStore>,
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
        store: Arc<dyn SharedStore>,
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
                Ok(range) => {
                    let events = range.events;
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
                    let stats = Arc::new(range.stats.unwrap_or_default());
                    self.deliver(Batch { events, stats });
                }
                Err(e) => {
                    StoreReadFailed { what: "read missed events", error: &e }.emit(&self.metrics);
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
        let head = match self.store.durable_head().await {
            Ok(head) => head,
            Err(e) => {
                StoreReadFailed { what: "read the durable head", error: &e }.emit(&self.metrics);
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

#[cfg(test)]
mod tests {
    //! The sequencer against an in-memory store and a hand-driven bus, on
    //! paused time: every timing rule of the module docs, no services.
    use super::*;
    use crate::activity::Activity;
    use crate::event::Event;
    use crate::hub::{Frame, Hub};
    use crate::persist::memory::MemoryPlugin;
    use crate::persist::shared::{Beat, Membership, Notifications, Range};
    use crate::persist::PersistError;
    use crate::stats::{DurableStats, Stats};
    use async_trait::async_trait;
    use parking_lot::Mutex;
    use tokio::sync::broadcast;

    /// The shared store in memory: events 1..=durable are committed and
    /// durable; reads fail while `failing` is above zero (counting down).
    #[derive(Default)]
    struct FakeStore {
        events: Mutex<Vec<Arc<Event>>>,
        failing: Mutex<u32>,
        reads: Mutex<u32>,
    }

    impl FakeStore {
        fn commit(&self, upto: u64) {
            let mut events = self.events.lock();
            while (events.len() as u64) < upto {
                let next = events.len() as u64 + 1;
                events.push(ev(next));
            }
        }

        fn check(&self) -> Result<(), PersistError> {
            *self.reads.lock() += 1;
            let mut failing = self.failing.lock();
            if *failing > 0 {
                *failing -= 1;
                return Err(PersistError::unavailable("fake", "connection refused"));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl SharedStore for FakeStore {
        async fn durable_head(&self) -> Result<u64, PersistError> {
            self.check()?;
            Ok(self.events.lock().len() as u64)
        }

        async fn read_range(&self, after: u64, upto: u64) -> Result<Range, PersistError> {
            self.check()?;
            let events =
                self.events.lock().iter().filter(|e| e.seq > after && e.seq <= upto).take(2).cloned().collect();
            Ok(Range { events, stats: None })
        }

        async fn heartbeat(&self, _beat: Beat<'_>) -> Result<Membership, PersistError> {
            Ok(Membership::default())
        }

        async fn leave(&self, _name: &str) -> Result<(), PersistError> {
            Ok(())
        }

        async fn listen(&self, _channel: &str) -> Result<Box<dyn Notifications>, PersistError> {
            Err(PersistError::unavailable("fake", "no notifications"))
        }

        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn ev(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(seq, "x", crate::event::now_ms(), Some(&format!("id-{seq}")), None, "{}"))
    }

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Batch {
        Batch { events: seqs.map(ev).collect(), stats: Arc::new(DurableStats::default()) }
    }

    struct Rig {
        store: Arc<FakeStore>,
        tx: mpsc::Sender<Input>,
        bus_up: Arc<AtomicBool>,
        frames: broadcast::Receiver<Arc<Frame>>,
        metrics: Arc<Metrics>,
    }

    impl Rig {
        /// A sequencer that delivered up to `delivered`; `has_bus`: a bus is
        /// configured (and up).
        fn start(delivered: u64, has_bus: bool) -> Rig {
            let store = Arc::new(FakeStore::default());
            store.commit(delivered);
            let metrics = Arc::new(Metrics::new());
            let hub = Arc::new(Hub::new(1024));
            let frames = hub.subscribe();
            let delivery = Delivery {
                stats: Arc::new(Stats::new(DurableStats::default())),
                activity: Arc::new(Activity::new(Arc::new(MemoryPlugin::new(100)), 100)),
                hub,
                gauges_changed: Default::default(),
            };
            let (tx, rx) = mpsc::channel(64);
            let bus_up = Arc::new(AtomicBool::new(true));
            let seq = Sequencer::new(store.clone(), delivery, metrics.clone(), delivered, None);
            tokio::spawn(seq.run(rx, bus_up.clone(), has_bus));
            Rig { store, tx, bus_up, frames, metrics }
        }

        async fn remote(&self, seqs: std::ops::RangeInclusive<u64>) {
            self.store.commit(*seqs.end());
            self.tx.send(Input::Remote(batch(seqs))).await.unwrap();
        }

        /// The seqs delivered since the last call.
        fn delivered(&mut self) -> Vec<u64> {
            let mut out = Vec::new();
            while let Ok(f) = self.frames.try_recv() {
                out.push(f.event.seq);
            }
            out
        }
    }

    async fn wait(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn batches_out_of_order_are_delivered_in_seq_order() {
        let mut rig = Rig::start(0, true);
        rig.remote(3..=4).await;
        rig.remote(6..=6).await;
        wait(1).await;
        assert_eq!(rig.delivered(), Vec::<u64>::new(), "nothing may pass a gap");
        rig.remote(1..=2).await;
        rig.remote(5..=5).await;
        wait(1).await;
        assert_eq!(rig.delivered(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(rig.metrics.broadcast_gap_fills_total.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_bus_message_is_filled_from_the_store_after_the_grace() {
        let mut rig = Rig::start(0, true);
        rig.store.commit(2); // 1..=2 committed; their bus message is lost
        rig.remote(3..=4).await;
        wait(GAP_GRACE.as_millis() as u64 / 2).await;
        assert_eq!(rig.delivered(), Vec::<u64>::new(), "the bus gets the grace period first");
        wait(GAP_GRACE.as_millis() as u64 + TICK.as_millis() as u64).await;
        assert_eq!(rig.delivered(), vec![1, 2, 3, 4]);
        assert_eq!(rig.metrics.broadcast_gap_fills_total.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_above_is_filled_only_when_seen_twice() {
        let mut rig = Rig::start(2, true);
        rig.store.commit(5); // 3..=5 committed, nothing on the bus, no later batch
        wait(HEAD_CHECK.as_millis() as u64 + 10).await;
        assert_eq!(rig.delivered(), Vec::<u64>::new(), "one sighting may still be on its way over the bus");
        wait(HEAD_CHECK.as_millis() as u64 + TICK.as_millis() as u64).await;
        assert_eq!(rig.delivered(), vec![3, 4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_bus_message_after_a_fill_is_not_delivered_twice() {
        let mut rig = Rig::start(0, true);
        rig.store.commit(2);
        rig.remote(3..=3).await;
        wait(GAP_GRACE.as_millis() as u64 + TICK.as_millis() as u64).await;
        assert_eq!(rig.delivered(), vec![1, 2, 3]);
        // The lost message turns up after all, and again, and overlapping.
        rig.remote(1..=2).await;
        rig.remote(2..=3).await;
        rig.remote(1..=4).await;
        wait(1).await;
        assert_eq!(rig.delivered(), vec![4], "only the new seq of the overlapping batch");
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_bus_down_the_head_is_filled_at_once() {
        let mut rig = Rig::start(0, true);
        rig.bus_up.store(false, Ordering::SeqCst);
        rig.tx.send(Input::BusUp(false)).await.unwrap();
        rig.store.commit(3);
        wait(TICK.as_millis() as u64 + 10).await;
        assert_eq!(rig.delivered(), vec![1, 2, 3], "filled on the first check, not the second");
        rig.store.commit(4);
        wait(TICK.as_millis() as u64).await;
        assert_eq!(rig.delivered(), vec![4]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bus_coming_back_checks_the_store_at_once() {
        let mut rig = Rig::start(0, true);
        rig.store.commit(2); // published while the bus was away: lost
        rig.tx.send(Input::BusUp(true)).await.unwrap();
        wait(1).await;
        assert_eq!(rig.delivered(), vec![1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn store_read_failures_are_counted_and_retried() {
        let mut rig = Rig::start(0, true);
        rig.store.commit(2);
        *rig.store.failing.lock() = 2;
        rig.remote(3..=3).await;
        wait(GAP_GRACE.as_millis() as u64 + TICK.as_millis() as u64).await;
        assert_eq!(rig.delivered(), Vec::<u64>::new(), "the fill failed");
        assert!(rig.metrics.broadcast_store_read_failures_total.get() >= 1);
        wait(3 * TICK.as_millis() as u64).await;
        assert_eq!(rig.delivered(), vec![1, 2, 3], "a later tick fills the gap once the store answers");
        assert_eq!(rig.metrics.broadcast_store_read_failures_total.get(), 2);
        assert!(*rig.store.reads.lock() >= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fill_reads_in_pages_until_the_gap_is_closed() {
        let mut rig = Rig::start(0, true);
        rig.store.commit(7); // the fake store answers two events a read
        rig.remote(8..=8).await;
        wait(GAP_GRACE.as_millis() as u64 + TICK.as_millis() as u64).await;
        assert_eq!(rig.delivered(), (1..=8).collect::<Vec<_>>());
    }
}
