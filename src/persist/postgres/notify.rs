//! LISTEN/NOTIFY for the `postgres` broadcast backend: a dedicated
//! (non-pooled) connection that LISTENs on the channel the durable step of
//! every commit notifies (see [`super::commit`]), probed for liveness.
//! Notifications sent while it was disconnected are lost: the cluster checks
//! the durable head after every (re)connect.

use super::{err, PostgresPlugin};
use crate::persist::shared::Notifications;
use crate::persist::PersistError;
use async_trait::async_trait;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// Liveness probe on the LISTEN connection.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `LISTEN "<channel>"` with the identifier quoted.
fn listen_sql(channel: &str) -> String {
    format!("LISTEN \"{}\"", channel.replace('"', "\"\""))
}

/// One LISTEN session.
pub(super) struct Listener {
    client: tokio_postgres::Client,
    /// The notified heads (`None`: a payload that is not a seq), from the
    /// task that drives the connection; closed when the connection ends.
    notified: mpsc::UnboundedReceiver<Option<u64>>,
    driver: tokio::task::JoinHandle<()>,
    probe: tokio::time::Interval,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl PostgresPlugin {
    pub(super) async fn open_listener(&self, channel: &str) -> Result<Listener, PersistError> {
        let (client, mut connection) =
            match tokio::time::timeout(PROBE_TIMEOUT, self.config.connect(self.tls.clone())).await {
                Err(_) => return Err(err("no answer from PostgreSQL")),
                Ok(Err(e)) => return Err(err(self.describe(&e))),
                Ok(Ok(pair)) => pair,
            };
        // The connection yields the notifications; drive it on its own task.
        let (ntx, notified) = mpsc::unbounded_channel();
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
        let listener = Listener { client, notified, driver, probe: tokio::time::interval(PROBE_EVERY) };
        match tokio::time::timeout(PROBE_TIMEOUT, listener.client.batch_execute(&listen_sql(channel))).await {
            Err(_) => Err(err("LISTEN: no answer")),
            Ok(Err(e)) => Err(err(e)),
            Ok(Ok(())) => Ok(listener),
        }
    }
}

#[async_trait]
impl Notifications for Listener {
    async fn next(&mut self) -> Result<u64, PersistError> {
        loop {
            tokio::select! {
                n = self.notified.recv() => match n {
                    Some(Some(upto)) => return Ok(upto),
                    Some(None) => {}
                    None => return Err(err("the LISTEN connection closed")),
                },
                _ = self.probe.tick() => {
                    match tokio::time::timeout(PROBE_TIMEOUT, self.client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(err(e)),
                        Err(_) => return Err(err("the LISTEN connection stopped answering")),
                    }
                }
            }
        }
    }
}
