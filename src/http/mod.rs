//! The HTTP API: one file per resource, each route mounted (and so named)
//! through [`Router`]. Every error leaves through [`ErrorResponse`] as the
//! contract's error body.

pub mod activity;
pub mod docs;
pub mod health;
pub mod ingest;
pub mod reply;
pub mod router;
pub mod stats;
pub mod ui;

pub use reply::{bytes_response, json_response, ErrorResponse};
pub use router::{Router, Routes};

use crate::activity::Activity;
use crate::config::ConfigRx;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::persist::PersistCallback;
use crate::pipeline::Pipeline;
use crate::stats::Stats;
use http::Method;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

/// What the HTTP handlers use; [`routes`] hands each handler only its part.
#[derive(Clone)]
pub struct State {
    /// The config in force (hot-reloadable parts are read per use).
    pub config: ConfigRx,
    pub pipeline: Pipeline,
    pub stats: Arc<Stats>,
    pub activity: Arc<Activity>,
    pub plugin: Arc<dyn PersistCallback>,
    pub metrics: Arc<Metrics>,
    /// The OpenAPI document, serialized (served at `/api-docs/openapi.json`).
    pub openapi: bytes::Bytes,
    /// Several replicas: their bus, for `/readyz` (`checks.broadcast`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// A filter that hands each request a clone of `value`.
pub fn with<T: Clone + Send + Sync + 'static>(
    value: T,
) -> impl Filter<Extract = (T,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// Every HTTP route; `upgraded` are the WebSocket paths the server upgrades
/// itself before routing (known here only for telling 405 from 404). The
/// OpenAPI document lists exactly [`Routes::known`] (`tests/openapi.rs`).
pub fn routes(state: State, upgraded: &[&'static str]) -> Routes {
    let State { config, pipeline, stats, activity, plugin, metrics, openapi, cluster } = state;
    let private_metrics = !config.borrow().config.metrics.listen.trim().is_empty();
    let router = Router::new()
        .mount(
            Method::POST,
            ingest::ROUTE,
            ingest::route(ingest::State { config: config.clone(), pipeline, metrics: metrics.clone() }),
        )
        .mount(Method::GET, stats::ROUTE, stats::route(stats::State { config: config.clone(), stats: stats.clone() }))
        .mount(Method::GET, activity::ROUTE, activity::route(activity::State { config, activity }))
        .mount(Method::GET, health::HEALTHZ_ROUTE, health::healthz())
        .mount(Method::GET, health::READYZ_ROUTE, health::readyz(plugin, cluster));
    let router = if private_metrics {
        router.mount_all_methods(Method::GET, health::METRICS_ROUTE, health::metrics_elsewhere())
    } else {
        router.mount(Method::GET, health::METRICS_ROUTE, health::metrics(health::MetricsState { metrics, stats }))
    };
    let router = ui::mount(router);
    docs::mount(router, openapi).build(upgraded)
}

/// The separate metrics listener (`metrics.listen`): `GET /healthz`, `GET
/// /metrics`, and a 404 for everything else.
pub fn metrics_listener_routes(state: State) -> BoxedFilter<(Response,)> {
    Router::new()
        .mount(Method::GET, health::HEALTHZ_ROUTE, health::healthz())
        .mount(
            Method::GET,
            health::METRICS_ROUTE,
            health::metrics(health::MetricsState { metrics: state.metrics, stats: state.stats }),
        )
        .build_with_fallback(|| {
            ApiError::new(ErrorCode::NotFound, "this listener serves GET /metrics and GET /healthz only").to_response()
        })
}
