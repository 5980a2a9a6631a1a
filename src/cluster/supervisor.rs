//! One reconnect loop for every bus: connect, tell the sequencer and the
//! metrics the bus is up, run the session until it breaks, tell them it is
//! down, back off (100 ms doubling to 5 s, reset by a session that
//! connected), again. The transitions are internal events
//! ([`BusConnected`], [`BusLost`]): logged once per outage and counted.

use super::Input;
use crate::internal_events::{BusConnected, BusLost};
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One kind of bus connection, as the supervisor drives it.
#[async_trait]
pub(crate) trait BusLink: Send + 'static {
    type Session: Send;

    /// The `backend` label (`redis`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Opens a session (connected and subscribed), or says why not.
    async fn connect(&mut self) -> Result<Self::Session, String>;

    /// Runs a session until it breaks; the reason.
    async fn run(&mut self, session: Self::Session) -> String;
}

/// Drives `link` for as long as the task runs.
pub(crate) async fn supervise(
    mut link: impl BusLink,
    sequencer: mpsc::Sender<Input>,
    bus_up: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let backend = link.backend();
    let mut backoff = BACKOFF_MIN;
    // Whether the current outage was told already (and counted).
    let mut down_told = false;
    let mut ever_up = false;
    loop {
        let error = match link.connect().await {
            Ok(session) => {
                bus_up.store(true, Ordering::SeqCst);
                BusConnected { backend, again: ever_up || down_told }.emit(&metrics);
                let _ = sequencer.send(Input::BusUp(true)).await;
                ever_up = true;
                down_told = false;
                backoff = BACKOFF_MIN;
                link.run(session).await
            }
            Err(e) => e,
        };
        bus_up.store(false, Ordering::SeqCst);
        let _ = sequencer.send(Input::BusUp(false)).await;
        BusLost { backend, error: &error, told: down_told }.emit(&metrics);
        down_told = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A link whose connects and sessions end as scripted.
    struct Scripted {
        connects: VecDeque<Result<(), String>>,
        runs: usize,
    }

    #[async_trait]
    impl BusLink for Scripted {
        type Session = ();

        fn backend(&self) -> &'static str {
            "redis"
        }

        async fn connect(&mut self) -> Result<(), String> {
            match self.connects.pop_front() {
                Some(r) => r,
                None => std::future::pending().await,
            }
        }

        async fn run(&mut self, _session: ()) -> String {
            self.runs += 1;
            if self.runs > 1 {
                std::future::pending::<()>().await;
            }
            "the connection closed".into()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_counted_once_and_the_bus_comes_back() {
        let metrics = Arc::new(Metrics::new());
        let bus_up = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel(16);
        let link = Scripted {
            // Up, then broken; four failed reconnects; up again (and held).
            connects: VecDeque::from(vec![
                Ok(()),
                Err("refused".into()),
                Err("refused".into()),
                Err("refused".into()),
                Err("refused".into()),
                Ok(()),
            ]),
            runs: 0,
        };
        tokio::spawn(supervise(link, tx, bus_up.clone(), metrics.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut seen = Vec::new();
        while let Ok(Input::BusUp(up)) = rx.try_recv() {
            seen.push(up);
        }
        assert_eq!(seen, vec![true, false, false, false, false, false, true]);
        assert_eq!(
            metrics.broadcast_bus_disconnects_total.with_label_values(&["redis"]).get(),
            1,
            "one outage, however many reconnects it took"
        );
        assert_eq!(metrics.broadcast_bus_up.with_label_values(&["redis"]).get(), 1);
        assert!(bus_up.load(Ordering::SeqCst));
    }
}
