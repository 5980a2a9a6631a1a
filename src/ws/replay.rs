//! Resume: stored events after the client's `afterSeq`, then
//! `resume_complete` (see the module doc of [`crate::ws`] for why no event
//! is lost or sent twice).

use super::end::End;
use super::outbox::{Out, Outbox};
use super::State;
use crate::hub::Frame;
use crate::metrics::WsMessageType;
use crate::persist::EventQuery;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::watch;

/// Replays stored events with seq > `after` (and < `before`, when live
/// events from `before` on went out already; newest `ws.max_replay` of them,
/// oldest first), then `resume_complete`. Returns the seq up to which later
/// live events are to be skipped as already sent or already known to the
/// client.
///
/// A replay is larger than the outbox by design: it writes whenever the
/// outbox is full, but a client that takes nothing for `ws.pong_timeout_secs`
/// is a slow consumer (the heartbeat, which cannot run meanwhile, would have
/// closed it by then), and shutdown interrupts it.
pub(super) async fn replay(
    state: &State,
    out: &mut Outbox<'_>,
    after: u64,
    before: Option<u64>,
    filter: &Option<HashSet<String>>,
    ws: &crate::config::WsConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<u64, End> {
    let max = ws.max_replay;
    let stall = Duration::from_secs(ws.pong_timeout_secs);
    let q = EventQuery {
        types: filter.as_ref().map(|s| s.iter().cloned().collect()).unwrap_or_default(),
        before,
        after: Some(after),
        limit: max + 1,
        ascending: false,
    };
    // Everything up to here is stored (stats follow the store), so a live
    // event up to here that is not replayed has seq <= `after`. With several
    // replicas, this one's delivery may lag behind what the client saw on
    // another: the cluster's durable head says how far the store is.
    let mut stored = state.stats.last_seq();
    if let Some(shared) = &state.shared {
        match shared.durable_head().await {
            Ok(head) => stored = stored.max(head),
            Err(e) => tracing::debug!(error = %e, "resume: cannot read the durable head; using this replica's"),
        }
    }
    let mut events = state.activity.query(&q).await.map_err(|e| {
        tracing::warn!(error = %e, "resume replay failed");
        End::ReplayFailed
    })?;
    // Also truncated when retention removed events the client has not seen:
    // the replay then starts at the oldest kept event.
    let floor = state.plugin.as_retention().map_or(0, |r| r.retention_floor());
    let truncated = events.len() > max || after < floor;
    events.truncate(max);
    events.reverse();
    let newest = events.last().map_or(0, |e| e.seq);
    // Skip live events the client has (<= `after`) or gets here, but never
    // beyond what this server had stored: a client whose `after` is ahead of
    // the server (a store that was reset, another server) must still get the
    // new events, not lose every one up to its `after`. With live events
    // already sent from `before` on, the hub only holds later ones: skip none.
    let cap = match before {
        Some(first_live) => first_live.saturating_sub(1),
        None => stored.max(newest),
    };
    let upto = newest.max(after).min(cap);
    let replayed = events.len();
    for e in events {
        push_waiting(out, Out::Event(Frame::new(e)), stall, shutdown).await?;
    }
    let last = state.stats.last_seq().max(upto);
    let done = json!({"replayed": replayed, "lastSeq": last, "truncated": truncated});
    push_waiting(out, Out::message(WsMessageType::ResumeComplete, done), stall, shutdown).await?;
    Ok(upto)
}

/// Queues `item`, writing the outbox out first while it is full (bounded by
/// `stall` per write, and by shutdown).
async fn push_waiting(
    out: &mut Outbox<'_>,
    mut item: Out,
    stall: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), End> {
    loop {
        match out.try_push(item) {
            Ok(()) => return Ok(()),
            Err(back) => item = back,
        }
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return Err(End::Shutdown),
            written = tokio::time::timeout(stall, out.write()) => match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(End::Broken),
                Err(_) => return Err(End::SlowConsumer),
            },
        }
    }
}
