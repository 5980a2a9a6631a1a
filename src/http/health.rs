//! `GET /healthz`, `GET /readyz` and `GET /metrics`.

use super::{bytes_response, json_response, with, ErrorResponse};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::persist::PersistCallback;
use crate::stats::Stats;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use warp::reply::Response;
use warp::Filter;

pub const HEALTHZ_ROUTE: &str = "/healthz";
pub const READYZ_ROUTE: &str = "/readyz";
pub const METRICS_ROUTE: &str = "/metrics";

/// How long the plugin's health check may take before it counts as down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/metrics` uses: the metrics, and the stats for the message rate.
#[derive(Clone)]
pub struct MetricsState {
    pub metrics: Arc<Metrics>,
    pub stats: Arc<Stats>,
}

/// `/metrics` on the public port when `metrics.listen` moves it elsewhere:
/// a 404 for every method.
pub fn metrics_elsewhere() -> warp::filters::BoxedFilter<(Response,)> {
    warp::any()
        .map(|| {
            ApiError::new(ErrorCode::NotFound, "metrics are served on the separate metrics.listen address")
                .to_response()
        })
        .boxed()
}

/// Liveness
///
/// 200 `{"status": "ok"}` while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs.", body = crate::schemas::Health))
)]
pub fn healthz() -> warp::filters::BoxedFilter<(Response,)> {
    warp::any().map(|| json_response(http::StatusCode::OK, &json!({"status": "ok"}))).boxed()
}

/// Readiness
///
/// 200 when the config is loaded and the persist plugin answers its health check (within 2 s);
/// else 503 with the failing check.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve.", body = crate::schemas::Ready,
            example = json!({"status": "ok", "checks": {"config": "ok", "persist": {"plugin": "sqlite", "status": "ok"}}})),
        (status = 503, description = "Not ready: the persist plugin is down.", body = crate::schemas::Ready,
            example = json!({"status": "unavailable", "checks": {"config": "ok",
                "persist": {"plugin": "postgres", "status": "unavailable", "error": "connection refused"}}})),
    )
)]
pub fn readyz(
    plugin: Arc<dyn PersistCallback>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> warp::filters::BoxedFilter<(Response,)> {
    with(plugin)
        .and(with(cluster))
        .then(|store: Arc<dyn PersistCallback>, cluster: Option<Arc<crate::cluster::Cluster>>| async move {
            let plugin = store.name();
            let persist = match tokio::time::timeout(HEALTH_TIMEOUT, store.health()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("health check took over {}s", HEALTH_TIMEOUT.as_secs())),
            };
            let mut checks = json!({"config": "ok", "persist": {"plugin": plugin, "status": "ok"}});
            if let Err(e) = &persist {
                checks["persist"] = json!({"plugin": plugin, "status": "unavailable", "error": e});
            }
            // Several replicas: a bus that is down degrades fan-out (events
            // then come from the store) but the replica stays ready.
            if let Some(up) = cluster.as_ref().and_then(|c| c.bus_connected()) {
                checks["broadcast"] = json!(if up { "ok" } else { "degraded" });
            }
            match persist {
                Ok(()) => json_response(http::StatusCode::OK, &json!({"status": "ok", "checks": checks})),
                Err(_) => json_response(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "unavailable", "checks": checks}),
                ),
            }
        })
        .boxed()
}

/// Prometheus metrics
///
/// The Prometheus text exposition format (0.0.4): `sidewire_*` metrics about WebSockets, ingest,
/// persistence, config reloads and HTTP requests, plus process metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format.",
            content((String = "text/plain; version=0.0.4; charset=utf-8", example = json!(
                "# HELP sidewire_ws_active_connections Open dashboard WebSockets.\n# TYPE sidewire_ws_active_connections gauge\nsidewire_ws_active_connections 2\n"))))
    )
)]
pub fn metrics(state: MetricsState) -> warp::filters::BoxedFilter<(Response,)> {
    with(Arc::new(state))
        .map(|st: Arc<MetricsState>| {
            st.metrics.ws_messages_per_minute.set(st.stats.messages_window.total() as i64);
            bytes_response(
                http::StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                st.metrics.render().into_bytes(),
            )
        })
        .boxed()
}
