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
    let State { config, pipeline, stats, activity, plugin, metrics, openapi } = state;
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
        .mount(Method::GET, health::READYZ_ROUTE, health::readyz(plugin));
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

/// The bearer token of a request: `Authorization: Bearer <t>`.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `given` equals one of `tokens`, in time that does not depend on
/// where they differ.
pub fn token_ok(tokens: &[String], given: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = given else { return false };
    let mut ok = subtle::Choice::from(0u8);
    for t in tokens {
        // Equal lengths compare every byte; a length mismatch still walks
        // the longer input so timing does not reveal a prefix match.
        let (a, b) = (t.as_bytes(), given.as_bytes());
        let n = a.len().max(b.len());
        let mut same = subtle::Choice::from((a.len() == b.len()) as u8);
        for i in 0..n {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            same &= x.ct_eq(&y);
        }
        ok |= same;
    }
    ok.into()
}

/// Dashboard read auth: open when no dashboard tokens are configured.
pub fn dashboard_auth(config: &ConfigRx, headers: &http::HeaderMap, query_token: Option<&str>) -> Result<(), ApiError> {
    let live = config.borrow().clone();
    let tokens = &live.config.auth.dashboard_tokens;
    if tokens.is_empty() || token_ok(tokens, bearer(headers).or(query_token)) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, "a dashboard token is required (Authorization: Bearer or ?token=)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        let tokens = vec!["tok-alpha".to_string(), "tok-beta".to_string()];
        assert!(token_ok(&tokens, Some("tok-beta")));
        assert!(!token_ok(&tokens, Some("tok-alph")));
        assert!(!token_ok(&tokens, Some("tok-alphaa")));
        assert!(!token_ok(&tokens, Some("")));
        assert!(!token_ok(&tokens, None));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
