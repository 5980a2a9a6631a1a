//! Counting open connections. An open dashboard connection is counted in
//! three places: the per-IP and global counts of [`WsState`](super::WsState)
//! (admission limits, shutdown drain), `activeConnections` in the stats and
//! the `sidewire_ws_active_connections` / `sidewire_ws_connections_total`
//! metrics. [`ConnectionGuard`] is the only thing that moves them: it counts
//! in all three when admission creates it and uncounts in all three when it
//! is dropped, whichever way the connection ends (upgrade failure, any
//! close, a panic in the task).

use super::per_ip::IpEntry;
use super::State;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// One open (admitted) dashboard connection.
pub(super) struct ConnectionGuard {
    state: Arc<State>,
    /// The per-IP key ([`super::per_ip::ip_key`]) the connection counts against.
    ip: IpAddr,
}

impl ConnectionGuard {
    /// Counts a connection that admission accepted. `entry` is `ip`'s per-IP
    /// entry, still locked by the caller, so the limit check and this count
    /// are one step.
    pub(super) fn open(state: &Arc<State>, ip: IpAddr, entry: &mut IpEntry, now: Instant) -> Self {
        entry.open += 1;
        entry.connects.push_back(now);
        state.sockets.open.fetch_add(1, Ordering::AcqRel);
        state.stats.active_connections.fetch_add(1, Ordering::Relaxed);
        state.metrics.ws_connections_total.inc();
        state.metrics.ws_active_connections.inc();
        Self { state: state.clone(), ip }
    }

    pub(super) fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub(super) fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let state = &self.state;
        state.metrics.ws_active_connections.dec();
        state.stats.active_connections.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = state.sockets.per_ip.lock();
        if let Some(e) = per_ip.map.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && e.connects.is_empty() {
                per_ip.map.remove(&self.ip);
            }
        }
        drop(per_ip);
        // Last: the shutdown drain waits for this to reach 0, so everything
        // else is uncounted by then.
        state.sockets.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::memory::MemoryPlugin;

    #[tokio::test]
    async fn one_guard_counts_in_ws_state_stats_and_metrics_and_uncounts_on_drop() {
        let running = crate::ServerBuilder::new(crate::config::Config::default())
            .persist(Arc::new(MemoryPlugin::new(16)))
            .start()
            .await
            .unwrap();
        let state = running.app.ws.clone();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let counts = |state: &State| {
            (
                state.sockets.open_connections(),
                state.stats.active_connections.load(Ordering::Relaxed),
                state.metrics.ws_active_connections.get(),
                state.metrics.ws_connections_total.get(),
                state.sockets.per_ip.lock().map.get(&ip).map(|e| e.open),
            )
        };
        let guard = {
            let mut per_ip = state.sockets.per_ip.lock();
            let entry = per_ip.map.entry(ip).or_default();
            ConnectionGuard::open(&state, ip, entry, Instant::now())
        };
        assert_eq!(counts(&state), (1, 1, 1, 1, Some(1)));
        drop(guard);
        // The entry stays while its connect counts against the rate limit.
        assert_eq!(counts(&state), (0, 0, 0, 1, Some(0)));
    }
}
