//! Internal events: one type per occurrence that is both logged and counted
//! (Vector's pattern). Each type's one [`emit`](PersistFailed::emit) writes
//! the log line and moves the counters, so the two never disagree and no
//! site can do one and forget the other. Label values come from the label
//! enums in [`crate::metrics`]; warnings that can repeat without bound go
//! through the [`Repeated`] throttle, while their counters stay exact.
//!
//! A log line belongs to the caller's span: a connection's events are
//! emitted inside its span (`span.in_scope(|| event.emit(metrics))`).

use crate::log_throttle::Repeated;
use crate::metrics::{DisconnectReason, Metrics, ReloadResult, WsRejectReason};
use std::fmt::Display;
use std::path::Path;

/// The persist plugin failed to store a batch.
pub struct PersistFailed<'a> {
    pub plugin: &'a str,
    pub error: &'a dyn Display,
    pub events: usize,
}

impl PersistFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.persist_failures_total.with_label_values(&[self.plugin]).inc();
        // A full disk fails every batch: the first is logged, then a line per
        // 10 s with the count (`suppressed`: left out since the previous
        // line); the counter above stays exact.
        if let Some(suppressed) = metrics.repeated.hit(Repeated::PersistFailed) {
            tracing::warn!(plugin = self.plugin, error = %self.error, events = self.events, suppressed, "persist failed");
        }
    }
}

/// The broadcast bus connected (`again`: after an outage).
pub struct BusConnected {
    pub backend: &'static str,
    pub again: bool,
}

impl BusConnected {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.broadcast_bus_up.with_label_values(&[self.backend]).set(1);
        if self.again {
            tracing::info!("{} bus connected again; fan-out is back on it", self.backend);
        } else {
            tracing::info!("{} bus connected", self.backend);
        }
    }
}

/// The broadcast bus went down, or a reconnect failed (`told`: this outage
/// was logged and counted already).
pub struct BusLost<'a> {
    pub backend: &'static str,
    pub error: &'a dyn Display,
    pub told: bool,
}

impl BusLost<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.broadcast_bus_up.with_label_values(&[self.backend]).set(0);
        if self.told {
            tracing::debug!(error = %self.error, "{} bus still down", self.backend);
        } else {
            metrics.broadcast_bus_disconnects_total.with_label_values(&[self.backend]).inc();
            tracing::warn!(error = %self.error,
                "{} bus down; dashboards get events from the store's head check until it is back", self.backend);
        }
    }
}

/// The cluster could not read the shared store (a gap fill or a head
/// check); it tries again on its next tick.
pub struct StoreReadFailed<'a> {
    pub what: &'static str,
    pub error: &'a dyn Display,
}

impl StoreReadFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.broadcast_store_read_failures_total.inc();
        if let Some(suppressed) = metrics.repeated.hit(Repeated::PersistFailed) {
            tracing::warn!(error = %self.error, suppressed, "cannot {} from the shared store; retrying", self.what);
        }
    }
}

/// The store could not say which ids it holds (dedupe beyond the window):
/// counted as a persist failure of the plugin.
pub struct DedupeLookupFailed<'a> {
    pub plugin: &'a str,
    pub error: &'a dyn Display,
}

impl DedupeLookupFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.persist_failures_total.with_label_values(&[self.plugin]).inc();
        if let Some(suppressed) = metrics.repeated.hit(Repeated::PersistFailed) {
            tracing::warn!(error = %self.error, suppressed, "dedupe lookup failed");
        }
    }
}

/// Retention removed old events from the store.
pub struct RetentionDeleted<'a> {
    pub plugin: &'a str,
    pub deleted: u64,
    pub ms: f64,
}

impl RetentionDeleted<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.persist_retention_deleted_total.with_label_values(&[self.plugin]).inc_by(self.deleted);
        tracing::debug!(plugin = self.plugin, deleted = self.deleted, ms = self.ms, "retention removed old events");
    }
}

/// A config reload was applied (`changed`: the keys that changed live).
pub struct ReloadApplied<'a> {
    pub trigger: &'a str,
    pub changed: &'a [&'a str],
}

impl ReloadApplied<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.config_reloads_total.with_label_values(&[ReloadResult::Success.label()]).inc();
        if self.changed.is_empty() {
            tracing::info!(trigger = self.trigger, "config reloaded; nothing to change");
        } else {
            tracing::info!(trigger = self.trigger, changed = %self.changed.join(", "), "config reloaded");
        }
    }
}

/// A reloaded config file was invalid; the config in force stays.
pub struct ReloadRejected<'a> {
    pub trigger: &'a str,
    pub path: &'a Path,
    /// The issues, joined.
    pub issues: &'a str,
}

impl ReloadRejected<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.config_reloads_total.with_label_values(&[ReloadResult::Failure.label()]).inc();
        // A file that stays broken while something keeps touching it (or
        // SIGHUPs in a loop) must not flood the log.
        if let Some(suppressed) = metrics.repeated.hit(Repeated::ReloadFailed) {
            tracing::error!(
                trigger = self.trigger,
                path = %self.path.display(),
                issues = %self.issues,
                suppressed,
                "invalid config; keeping the config in force"
            );
        }
    }
}

/// A config reload failed before validation (unreadable file, environment).
pub struct ReloadFailed<'a> {
    pub trigger: &'a str,
    pub error: &'a str,
}

impl ReloadFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.config_reloads_total.with_label_values(&[ReloadResult::Failure.label()]).inc();
        if let Some(suppressed) = metrics.repeated.hit(Repeated::ReloadFailed) {
            tracing::error!(trigger = self.trigger, error = %self.error, suppressed,
                "config reload failed; keeping the config in force");
        }
    }
}

/// `accept` on the public listener failed (EMFILE and friends).
pub struct AcceptFailed<'a> {
    pub error: &'a dyn Display,
    pub open_connections: usize,
    pub retry_in_ms: u64,
}

impl AcceptFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.http_accept_errors_total.inc();
        if let Some(suppressed) = metrics.repeated.hit(Repeated::AcceptFailed) {
            tracing::warn!(error = %self.error, suppressed, open_connections = self.open_connections,
                retry_in_ms = self.retry_in_ms, "accept failed");
        }
    }
}

/// A dashboard WebSocket upgrade was refused.
pub struct WsRejected {
    pub reason: WsRejectReason,
}

impl WsRejected {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.ws_rejected_connections_total.with_label_values(&[self.reason.label()]).inc();
        tracing::debug!(reason = self.reason.label(), "websocket upgrade refused");
    }
}

/// A dashboard WebSocket ended.
pub struct WsDisconnected {
    pub reason: DisconnectReason,
}

impl WsDisconnected {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.ws_disconnects_total.with_label_values(&[self.reason.label()]).inc();
        match self.reason {
            DisconnectReason::SlowConsumer => tracing::warn!("closed a slow consumer (send queue full)"),
            DisconnectReason::HeartbeatTimeout => tracing::info!("closed: no pong in time"),
            reason => tracing::debug!(reason = reason.label(), "connection closed"),
        }
    }
}

/// A dashboard client sent a message that is not understood; logged
/// rate-limited across all connections (a fleet of misbehaving clients, or
/// one that reconnects after each message, must not flood the log either).
pub struct WsInvalidMessage<'a> {
    pub what: &'a str,
}

impl WsInvalidMessage<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.ws_invalid_messages_total.inc();
        if let Some(suppressed) = metrics.repeated.hit(Repeated::InvalidWsMessage) {
            tracing::warn!(what = self.what, suppressed, "ignored an invalid client message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_counts_under_its_enum_label() {
        let m = Metrics::new();
        WsDisconnected { reason: DisconnectReason::SlowConsumer }.emit(&m);
        WsRejected { reason: WsRejectReason::RateLimit }.emit(&m);
        WsInvalidMessage { what: "x" }.emit(&m);
        WsInvalidMessage { what: "x" }.emit(&m); // throttled log, exact count
        ReloadApplied { trigger: "sighup", changed: &[] }.emit(&m);
        ReloadFailed { trigger: "sighup", error: "gone" }.emit(&m);
        ReloadRejected { trigger: "watch", path: Path::new("x.toml"), issues: "bad" }.emit(&m);
        PersistFailed { plugin: "memory", error: &"disk full", events: 3 }.emit(&m);
        DedupeLookupFailed { plugin: "memory", error: &"disk full" }.emit(&m);
        RetentionDeleted { plugin: "memory", deleted: 5, ms: 1.0 }.emit(&m);
        AcceptFailed { error: &"EMFILE", open_connections: 0, retry_in_ms: 5 }.emit(&m);
        assert_eq!(m.ws_disconnects_total.with_label_values(&["slow_consumer"]).get(), 1);
        assert_eq!(m.ws_rejected_connections_total.with_label_values(&["rate_limit"]).get(), 1);
        assert_eq!(m.ws_invalid_messages_total.get(), 2);
        assert_eq!(m.config_reloads_total.with_label_values(&["success"]).get(), 1);
        assert_eq!(m.config_reloads_total.with_label_values(&["failure"]).get(), 2);
        assert_eq!(m.persist_failures_total.with_label_values(&["memory"]).get(), 2);
        assert_eq!(m.persist_retention_deleted_total.with_label_values(&["memory"]).get(), 5);
        assert_eq!(m.http_accept_errors_total.get(), 1);
    }
}
