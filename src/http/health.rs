//! `GET /healthz`, `GET /readyz` and `GET /metrics`.

use super::{bytes_response, json_response, named, with_app};
use crate::server::App;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use warp::reply::Response;
use warp::Filter;

/// How long the plugin's health check may take before it counts as down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(Response,)> {
    let private = !app.config.borrow().config.metrics.listen.trim().is_empty();
    let metrics = if private { metrics_elsewhere() } else { metrics(app.clone()) };
    healthz().or(readyz(app)).unify().or(metrics).unify().boxed()
}

/// `/metrics` on the public port when `metrics.listen` moved it elsewhere.
fn metrics_elsewhere() -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .map(|| not_found("/metrics", "metrics are served on the separate metrics.listen address"))
        .boxed()
}

fn not_found(route: &'static str, message: &'static str) -> Response {
    named(route, crate::error::ApiError::new(crate::error::ErrorCode::NotFound, message).to_response())
}

/// The routes of the separate metrics listener (`metrics.listen`).
pub fn metrics_listener_routes(app: Arc<App>) -> warp::filters::BoxedFilter<(Response,)> {
    healthz()
        .or(metrics(app))
        .unify()
        .or(warp::any()
            .map(|| not_found(crate::http::UNMATCHED, "this listener serves GET /metrics and GET /healthz only")))
        .unify()
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
    responses((status = 200, description = "The process runs.", body = crate::api_docs::Health))
)]
pub fn healthz() -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| named("/healthz", json_response(http::StatusCode::OK, &json!({"status": "ok"}))))
        .boxed()
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
        (status = 200, description = "Ready to serve.", body = crate::api_docs::Ready,
            example = json!({"status": "ok", "checks": {"config": "ok", "persist": {"plugin": "sqlite", "status": "ok"}}})),
        (status = 503, description = "Not ready: the persist plugin is down.", body = crate::api_docs::Ready,
            example = json!({"status": "unavailable", "checks": {"config": "ok",
                "persist": {"plugin": "postgres", "status": "unavailable", "error": "connection refused"}}})),
    )
)]
pub fn readyz(app: Arc<App>) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("readyz")
        .and(warp::get())
        .and(with_app(app))
        .then(|app: Arc<App>| async move {
            let plugin = app.plugin.name();
            let persist = match tokio::time::timeout(HEALTH_TIMEOUT, app.plugin.health()).await {
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
            if let Some(up) = app.cluster.as_ref().and_then(|c| c.bus_connected()) {
                checks["broadcast"] = json!(if up { "ok" } else { "degraded" });
            }
            let res = match persist {
                Ok(()) => json_response(http::StatusCode::OK, &json!({"status": "ok", "checks": checks})),
                Err(_) => json_response(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "unavailable", "checks": checks}),
                ),
            };
            named("/readyz", res)
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
pub fn metrics(app: Arc<App>) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_app(app))
        .map(|app: Arc<App>| {
            app.metrics.ws_messages_per_minute.set(app.stats.messages_window.total() as i64);
            named(
                "/metrics",
                bytes_response(
                    http::StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    app.metrics.render().into_bytes(),
                ),
            )
        })
        .boxed()
}
