//! Prometheus metrics (contract section 6). One registry per server; every
//! labelled series whose label values are known up front exists at 0 from
//! start-up, so `rate()` panels and alerts have a series before the first
//! occurrence.

use parking_lot::Mutex;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::collections::HashSet;

/// Most distinct `type` label values on `sidewire_ingest_events_total`; later
/// types are counted as `other`.
pub const MAX_TYPE_LABELS: usize = 100;

/// Declares a label enum: its variants, their label values and `ALL` (every
/// value, so its series exist at 0 from start-up). The label strings live
/// here only; callers pass the variant.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

label_enum! {
    /// The `reason` of `sidewire_ws_disconnects_total` (contract section 6).
    DisconnectReason {
        ClientClose => "client_close",
        SlowConsumer => "slow_consumer",
        HeartbeatTimeout => "heartbeat_timeout",
        /// A socket or store failure, or a client frame that is too big.
        Error => "error",
        Shutdown => "shutdown",
    }
}

label_enum! {
    /// The `reason` of `sidewire_ws_rejected_connections_total` (contract section 6).
    WsRejectReason {
        Unauthorized => "unauthorized",
        ForbiddenOrigin => "forbidden_origin",
        PerIpLimit => "per_ip_limit",
        RateLimit => "rate_limit",
        AtCapacity => "at_capacity",
    }
}

label_enum! {
    /// The `reason` of `sidewire_http_rejected_connections_total`.
    HttpRejectReason {
        /// `server.max_http_connections` are open.
        AtCapacity => "at_capacity",
    }
}

label_enum! {
    /// The `phase` of `sidewire_http_timeouts_total`.
    TimeoutPhase {
        /// No request began within `server.idle_timeout_secs`.
        Idle => "idle",
        /// A request's head did not arrive in time.
        RequestHead => "request_head",
        /// A request's body did not arrive in time (408).
        RequestBody => "request_body",
        /// The client took nothing of a response for
        /// `server.write_timeout_secs` (closed with a reset).
        ResponseWrite => "response_write",
    }
}

label_enum! {
    /// The `result` of `sidewire_config_reloads_total`.
    ReloadResult {
        Success => "success",
        Failure => "failure",
    }
}

label_enum! {
    /// A server message's `type`, on the wire and as the `type` label of
    /// `sidewire_ws_messages_sent_total` (events count as `event`).
    WsMessageType {
        ConnectionAck => "connection_ack",
        StatsUpdate => "stats_update",
        Pong => "pong",
        ResumeComplete => "resume_complete",
        Event => "event",
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub ws_active_connections: IntGauge,
    pub ws_connections_total: IntCounter,
    pub ws_rejected_connections_total: IntCounterVec,
    pub ws_messages_sent_total: IntCounterVec,
    pub ws_messages_per_minute: IntGauge,
    pub ws_disconnects_total: IntCounterVec,
    pub ws_invalid_messages_total: IntCounter,
    pub ingest_requests_total: IntCounterVec,
    pub ingest_events_total: IntCounterVec,
    pub ingest_duplicates_total: IntCounter,
    pub persist_success_total: IntCounterVec,
    pub persist_failures_total: IntCounterVec,
    pub persist_duration_seconds: HistogramVec,
    pub persist_queue_depth: IntGauge,
    /// Bytes the store occupies on disk (plugins that keep files).
    pub persist_store_bytes: IntGaugeVec,
    /// The store size at which its filesystem is full (store + free space).
    pub persist_store_limit_bytes: IntGaugeVec,
    /// Events removed by retention.
    pub persist_retention_deleted_total: IntCounterVec,
    /// Age of the oldest kept event (since it was stored); 0 when empty.
    pub persist_oldest_event_age_seconds: GaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub build_info: IntGaugeVec,
    /// Open TCP connections on the public listener (HTTP and WebSocket).
    pub http_open_connections: IntGauge,
    /// The connection limit in force (`server.max_http_connections`, resolved).
    pub http_max_connections: IntGauge,
    /// Connections closed at accept, by reason ([`HttpRejectReason`]).
    pub http_rejected_connections_total: IntCounterVec,
    /// Connections ended by a deadline, by phase ([`TimeoutPhase`]).
    pub http_timeouts_total: IntCounterVec,
    /// Failed `accept` calls on the public listener (EMFILE and friends).
    pub http_accept_errors_total: IntCounter,
    /// Live replicas as this one sees them (1 without a cluster).
    pub cluster_replicas: IntGauge,
    /// 1 while the configured broadcast bus is connected.
    pub broadcast_bus_up: IntGaugeVec,
    /// Times the bus went down (one per outage, not per reconnect attempt).
    pub broadcast_bus_disconnects_total: IntCounterVec,
    pub broadcast_received_total: IntCounter,
    pub broadcast_gap_fills_total: IntCounter,
    /// Failed reads of the shared store by the cluster's sequencer (gap
    /// fills, head checks).
    pub broadcast_store_read_failures_total: IntCounter,
    /// 1 while this replica commits every replica's groups (the cluster's
    /// writer, see `cluster::relay`).
    pub cluster_writer: IntGauge,
    /// Groups forwarded to the cluster's writer, by how they ended
    /// (`answered`, `taken_back`: not taken, committed here; `lost`: no
    /// answer, 503).
    pub cluster_forwards_total: IntCounterVec,
    /// Rate-limits the warnings that can repeat without bound; kept next to
    /// the counters because every site that counts such a warning logs it.
    pub repeated: std::sync::Arc<crate::log_throttle::LogThrottle>,
    seen_types: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
    r.register(Box::new(h.clone())).expect("metric registered once");
    h
}

const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        let m = Metrics {
            ws_active_connections: gauge(&r, "sidewire_ws_active_connections", "Open dashboard WebSockets."),
            ws_connections_total: counter(&r, "sidewire_ws_connections_total", "Dashboard WebSockets opened."),
            ws_rejected_connections_total: counter_vec(
                &r,
                "sidewire_ws_rejected_connections_total",
                "Dashboard WebSocket upgrades refused, by reason.",
                &["reason"],
            ),
            ws_messages_sent_total: counter_vec(
                &r,
                "sidewire_ws_messages_sent_total",
                "WebSocket messages sent, by message type (events count as `event`).",
                &["type"],
            ),
            ws_messages_per_minute: gauge(
                &r,
                "sidewire_ws_messages_per_minute",
                "WebSocket messages sent in the last 60 s.",
            ),
            ws_disconnects_total: counter_vec(
                &r,
                "sidewire_ws_disconnects_total",
                "Dashboard WebSockets closed, by reason.",
                &["reason"],
            ),
            ws_invalid_messages_total: counter(
                &r,
                "sidewire_ws_invalid_messages_total",
                "Client WebSocket messages that were not understood.",
            ),
            ingest_requests_total: counter_vec(
                &r,
                "sidewire_ingest_requests_total",
                "Ingest requests, by HTTP status.",
                &["status"],
            ),
            ingest_events_total: counter_vec(
                &r,
                "sidewire_ingest_events_total",
                "Events accepted, by type (at most 100 types, then `other`).",
                &["type"],
            ),
            ingest_duplicates_total: counter(
                &r,
                "sidewire_ingest_duplicates_total",
                "Events skipped because their id was already accepted.",
            ),
            persist_success_total: counter_vec(
                &r,
                "sidewire_persist_success_total",
                "Batches stored by the persist plugin.",
                &["plugin"],
            ),
            persist_failures_total: counter_vec(
                &r,
                "sidewire_persist_failures_total",
                "Batches the persist plugin failed to store.",
                &["plugin"],
            ),
            persist_duration_seconds: histogram_vec(
                &r,
                "sidewire_persist_duration_seconds",
                "Time to store one batch.",
                &["plugin"],
                LATENCY_BUCKETS.to_vec(),
            ),
            persist_queue_depth: gauge(&r, "sidewire_persist_queue_depth", "Events waiting for the persist plugin."),
            persist_store_bytes: int_gauge_vec(
                &r,
                "sidewire_persist_store_bytes",
                "Bytes the store occupies on disk.",
                &["plugin"],
            ),
            persist_store_limit_bytes: int_gauge_vec(
                &r,
                "sidewire_persist_store_limit_bytes",
                "The store size at which its filesystem is full (store plus free space).",
                &["plugin"],
            ),
            persist_retention_deleted_total: counter_vec(
                &r,
                "sidewire_persist_retention_deleted_total",
                "Events removed from the store by retention.",
                &["plugin"],
            ),
            persist_oldest_event_age_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "sidewire_persist_oldest_event_age_seconds",
                        "Seconds since the oldest kept event was stored (0: the store is empty).",
                    ),
                    &["plugin"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            config_reloads_total: counter_vec(
                &r,
                "sidewire_config_reloads_total",
                "Config reloads, by result.",
                &["result"],
            ),
            http_requests_total: counter_vec(
                &r,
                "sidewire_http_requests_total",
                "HTTP requests, by matched route and status.",
                &["route", "status"],
            ),
            http_request_duration_seconds: histogram_vec(
                &r,
                "sidewire_http_request_duration_seconds",
                "HTTP request latency, by matched route.",
                &["route"],
                LATENCY_BUCKETS.to_vec(),
            ),
            build_info: {
                let g = IntGaugeVec::new(Opts::new("sidewire_build_info", "Build information."), &["version"])
                    .expect("valid metric");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            http_open_connections: gauge(
                &r,
                "sidewire_http_open_connections",
                "Open TCP connections on the public listener (HTTP and WebSocket).",
            ),
            http_max_connections: gauge(
                &r,
                "sidewire_http_max_connections",
                "The connection limit in force on the public listener.",
            ),
            http_rejected_connections_total: counter_vec(
                &r,
                "sidewire_http_rejected_connections_total",
                "Connections closed at accept, by reason.",
                &["reason"],
            ),
            http_timeouts_total: counter_vec(
                &r,
                "sidewire_http_timeouts_total",
                "Connections ended by a deadline: idle (no request began), request_head or request_body (408), \
                 response_write (the client took nothing of a response for server.write_timeout_secs).",
                &["phase"],
            ),
            http_accept_errors_total: counter(
                &r,
                "sidewire_http_accept_errors_total",
                "Failed accept calls on the public listener.",
            ),
            cluster_replicas: gauge(&r, "sidewire_cluster_replicas", "Live replicas as this one sees them."),
            broadcast_bus_up: int_gauge_vec(
                &r,
                "sidewire_broadcast_bus_up",
                "1 while the configured broadcast bus (local, redis, postgres) is connected.",
                &["backend"],
            ),
            broadcast_bus_disconnects_total: counter_vec(
                &r,
                "sidewire_broadcast_bus_disconnects_total",
                "Times the broadcast bus went down (one per outage, however many reconnects it takes).",
                &["backend"],
            ),
            broadcast_received_total: counter(
                &r,
                "sidewire_broadcast_received_total",
                "Events received from other replicas over the broadcast bus.",
            ),
            broadcast_gap_fills_total: counter(
                &r,
                "sidewire_broadcast_gap_fills_total",
                "Times missing seqs were read back from the store.",
            ),
            broadcast_store_read_failures_total: counter(
                &r,
                "sidewire_broadcast_store_read_failures_total",
                "Failed reads of the shared store by the cluster (gap fills, head checks); retried.",
            ),
            cluster_writer: gauge(
                &r,
                "sidewire_cluster_writer",
                "1 while this replica commits every replica's groups (the cluster's writer).",
            ),
            cluster_forwards_total: counter_vec(
                &r,
                "sidewire_cluster_forwards_total",
                "Groups forwarded to the cluster's writer, by result (answered, taken_back, lost).",
                &["result"],
            ),
            repeated: Default::default(),
            registry: r,
            seen_types: Mutex::new(HashSet::new()),
        };
        m.build_info.with_label_values(&[crate::version::VERSION]).set(1);
        // One process until a cluster says otherwise (see crate::cluster).
        m.cluster_replicas.set(1);
        m.broadcast_bus_up.with_label_values(&["local"]).set(1);
        for reason in DisconnectReason::ALL {
            m.ws_disconnects_total.with_label_values(&[reason.label()]);
        }
        for reason in WsRejectReason::ALL {
            m.ws_rejected_connections_total.with_label_values(&[reason.label()]);
        }
        for t in WsMessageType::ALL {
            m.ws_messages_sent_total.with_label_values(&[t.label()]);
        }
        for result in ReloadResult::ALL {
            m.config_reloads_total.with_label_values(&[result.label()]);
        }
        for reason in HttpRejectReason::ALL {
            m.http_rejected_connections_total.with_label_values(&[reason.label()]);
        }
        for phase in TimeoutPhase::ALL {
            m.http_timeouts_total.with_label_values(&[phase.label()]);
        }
        for status in ["202", "400", "401", "408", "413", "415", "503"] {
            m.ingest_requests_total.with_label_values(&[status]);
        }
        m
    }

    /// Pre-creates the plugin-labelled series for the plugin in use.
    pub fn init_plugin(&self, plugin: &str) {
        self.persist_success_total.with_label_values(&[plugin]);
        self.persist_failures_total.with_label_values(&[plugin]);
        self.persist_duration_seconds.with_label_values(&[plugin]);
        self.persist_retention_deleted_total.with_label_values(&[plugin]);
    }

    /// The `type` label for an event type: itself for the first 100 seen.
    pub fn type_label<'a>(&self, kind: &'a str) -> &'a str {
        let mut seen = self.seen_types.lock();
        if seen.contains(kind) {
            return kind;
        }
        if seen.len() < MAX_TYPE_LABELS {
            seen.insert(kind.to_string());
            return kind;
        }
        "other"
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    pub fn observe_http(&self, route: &str, status: u16, seconds: f64) {
        self.http_requests_total.with_label_values(&[route, &status.to_string()]).inc();
        self.http_request_duration_seconds.with_label_values(&[route]).observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_series_exist_at_zero() {
        let m = Metrics::new();
        m.init_plugin("sqlite");
        let text = m.render();
        assert!(text.contains("sidewire_ws_disconnects_total{reason=\"slow_consumer\"} 0"));
        assert!(text.contains("sidewire_persist_failures_total{plugin=\"sqlite\"} 0"));
        assert!(text.contains("sidewire_persist_retention_deleted_total{plugin=\"sqlite\"} 0"));
        assert!(text.contains("sidewire_config_reloads_total{result=\"failure\"} 0"));
        assert!(text.contains(&format!("sidewire_build_info{{version=\"{}\"}} 1", crate::version::VERSION)));
    }

    #[test]
    fn type_label_is_capped() {
        let m = Metrics::new();
        for i in 0..MAX_TYPE_LABELS {
            assert_eq!(m.type_label(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(m.type_label("t0"), "t0");
        assert_eq!(m.type_label("new"), "other");
    }
}
