//! The `stats_update` pusher: one task for all connections, which watch the
//! newest message.

use super::protocol::message;
use super::State;
use crate::metrics::WsMessageType;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pushes `stats_update` to every connection: every `stats.interval_secs`,
/// and within `stats.min_push_interval_ms` (at most one push per that
/// interval) after a gauge changed.
pub async fn stats_pusher(state: Arc<State>, gauges_changed: Arc<tokio::sync::Notify>) {
    let mut config = state.config.clone();
    let mut last_push = Instant::now();
    loop {
        let (interval, min_gap) = {
            let live = config.borrow_and_update();
            (
                Duration::from_secs(live.config.stats.interval_secs),
                Duration::from_millis(live.config.stats.min_push_interval_ms),
            )
        };
        let next_tick = last_push + interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick.into()) => {}
            _ = gauges_changed.notified() => {
                let earliest = last_push + min_gap;
                tokio::time::sleep_until(earliest.into()).await;
            }
            _ = config.changed() => continue,
        }
        last_push = Instant::now();
        if state.sockets.open_connections() > 0 {
            state.sockets.push_stats(message(WsMessageType::StatsUpdate, Value::Object(state.stats_snapshot())));
        }
    }
}
