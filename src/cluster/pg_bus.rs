//! `broadcast.backend = "postgres"`: fan-out through the database itself,
//! for users without Redis. Each commit runs `pg_notify(channel, last_seq)`
//! inside its transaction (delivered at commit, in commit order); every
//! replica LISTENs on its own connection and reads the new events from the
//! store. Notifications sent while a replica was disconnected are lost, so
//! a (re)connect is followed by a head check, and the sequencer's periodic
//! head check covers the rest.

use super::Input;
use crate::metrics::Metrics;
use crate::persist::postgres::PostgresPlugin;
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// Liveness probe on the LISTEN connection.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `LISTEN "<channel>"` with the identifier quoted.
fn listen_sql(channel: &str) -> String {
    format!("LISTEN \"{}\"", channel.replace('"', "\"\""))
}

pub(crate) fn start(
    store: Arc<PostgresPlugin>,
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
            let error = match tokio::time::timeout(PROBE_TIMEOUT, store.connect_config().connect(store.tls())).await {
                Err(_) => "no answer from PostgreSQL".to_string(),
                Ok(Err(e)) => store.describe(&e),
                Ok(Ok((client, mut connection))) => {
                    // The connection yields the notifications; drive it here.
                    let (ntx, mut nrx) = mpsc::unbounded_channel();
                    let driver = tokio::spawn(async move {
                        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(m) = messages.next().await {
                            match m {
                                Ok(AsyncMessage::Notification(n)) => {
                                    let _ = ntx.send(n.payload().parse::<u64>().ok());
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    });
                    let listening =
                        tokio::time::timeout(PROBE_TIMEOUT, client.batch_execute(&listen_sql(&channel))).await;
                    let error = match listening {
                        Err(_) => "LISTEN: no answer".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(())) => {
                            set_up(true);
                            let _ = sequencer.send(Input::BusUp(true)).await;
                            if logged_down {
                                tracing::info!(channel = %channel, "postgres notifications back; fan-out resumed");
                            }
                            logged_down = false;
                            backoff = BACKOFF_MIN;
                            let mut probe = tokio::time::interval(PROBE_EVERY);
                            loop {
                                tokio::select! {
                                    n = nrx.recv() => match n {
                                        Some(Some(upto)) => { let _ = sequencer.send(Input::Notified(upto)).await; }
                                        Some(None) => {}
                                        None => break "the LISTEN connection closed".to_string(),
                                    },
                                    _ = probe.tick() => {
                                        match tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await {
                                            Ok(Ok(_)) => {}
                                            Ok(Err(e)) => break e.to_string(),
                                            Err(_) => break "the LISTEN connection stopped answering".to_string(),
                                        }
                                    }
                                }
                            }
                        }
                    };
                    driver.abort();
                    error
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
