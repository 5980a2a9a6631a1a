//! `broadcast.backend = "postgres"`: fan-out through the store itself, for
//! users without Redis. The durable step of every commit notifies the
//! durable head (delivered in commit order); every replica listens on its
//! own session ([`SharedStore::listen`]) and reads the new events from the
//! store. Notifications sent while a replica was disconnected are lost, so
//! a (re)connect is followed by a head check, and the sequencer's periodic
//! head check covers the rest.

use super::Input;
use crate::metrics::Metrics;
use crate::persist::shared::SharedStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) fn start(
    store: Arc<dyn SharedStore>,
    channel: String,
    sequencer: mpsc::Sender<Input>,
    bus_up: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut logged_down = false;
        let set_up = |up: bool| {
            bus_up.store(up, Ordering::SeqCst);
            metrics.broadcast_bus_up.with_label_values(&["postgres"]).set(i64::from(up));
        };
        loop {
            let error = match store.listen(&channel).await {
                Err(e) => e.to_string(),
                Ok(mut session) => {
                    set_up(true);
                    let _ = sequencer.send(Input::BusUp(true)).await;
                    if logged_down {
                        tracing::info!(channel = %channel, "postgres notifications back; fan-out resumed");
                    }
                    logged_down = false;
                    backoff = BACKOFF_MIN;
                    loop {
                        match session.next().await {
                            Ok(upto) => {
                                let _ = sequencer.send(Input::Notified(upto)).await;
                            }
                            Err(e) => break e.to_string(),
                        }
                    }
                }
            };
            set_up(false);
            let _ = sequencer.send(Input::BusUp(false)).await;
            if !logged_down {
                tracing::warn!(error = %error, "postgres notifications down; dashboards get events from the store's head check");
                logged_down = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}
