//! `broadcast.backend = "postgres"`: fan-out through the store itself, for
//! users without Redis. The durable step of every commit notifies the
//! durable head (delivered in commit order); every replica listens on its
//! own session ([`SharedStore::listen`]) and reads the new events from the
//! store. Notifications sent while a replica was disconnected are lost, so
//! a (re)connect is followed by a head check, and the sequencer's periodic
//! head check covers the rest. Reconnects are the [`supervisor`]'s.
//!
//! [`supervisor`]: super::supervisor

use super::supervisor::{supervise, BusLink};
use super::Input;
use crate::metrics::Metrics;
use crate::persist::shared::{Notifications, SharedStore};
use async_trait::async_trait;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::mpsc;

struct Link {
    store: Arc<dyn SharedStore>,
    channel: String,
    sequencer: mpsc::Sender<Input>,
}

#[async_trait]
impl BusLink for Link {
    type Session = Box<dyn Notifications>;

    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn connect(&mut self) -> Result<Self::Session, String> {
        self.store.listen(&self.channel).await.map_err(|e| e.to_string())
    }

    async fn run(&mut self, mut session: Self::Session) -> String {
        loop {
            match session.next().await {
                Ok(upto) => {
                    let _ = self.sequencer.send(Input::Notified(upto)).await;
                }
                Err(e) => return e.to_string(),
            }
        }
    }
}

pub(crate) fn start(
    store: Arc<dyn SharedStore>,
    channel: String,
    sequencer: mpsc::Sender<Input>,
    bus_up: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let link = Link { store, channel, sequencer: sequencer.clone() };
    tokio::spawn(supervise(link, sequencer, bus_up, metrics))
}
