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
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| named("/healthz", json_response(http::StatusCode::OK, &json!({"status": "ok"}))));
    let readyz = warp::path!("readyz").and(warp::get()).and(with_app(app.clone())).then(|app: Arc<App>| async move {
        let plugin = app.plugin.name();
        let persist = match tokio::time::timeout(HEALTH_TIMEOUT, app.plugin.health()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("health check took over {}s", HEALTH_TIMEOUT.as_secs())),
        };
        let res = match persist {
            Ok(()) => json_response(
                http::StatusCode::OK,
                &json!({"status": "ok", "checks": {"config": "ok", "persist": {"plugin": plugin, "status": "ok"}}}),
            ),
            Err(e) => json_response(
                http::StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "unavailable",
                        "checks": {"config": "ok", "persist": {"plugin": plugin, "status": "unavailable", "error": e}}}),
            ),
        };
        named("/readyz", res)
    });
    let metrics = warp::path!("metrics").and(warp::get()).and(with_app(app)).map(|app: Arc<App>| {
        app.metrics.ws_messages_per_minute.set(app.stats.messages_window.total() as i64);
        named(
            "/metrics",
            bytes_response(http::StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", app.metrics.render().into_bytes()),
        )
    });
    healthz.or(readyz).unify().or(metrics).unify().boxed()
}
