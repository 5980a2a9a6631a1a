//! `GET /api/v1/stats` (contract section 3).

use super::{json_response, named, with_app};
use crate::server::App;
use std::collections::HashMap;
use std::sync::Arc;
use warp::reply::Response;
use warp::Filter;

pub const ROUTE: &str = "/api/v1/stats";

/// Current stats
///
/// One flat JSON object, camelCase keys: the built-ins (always present), the counters defined by
/// `stats.counters` (by default `filesProcessed`, `queriesCompleted`, `errors`) and the gauges the
/// backend pushed with `stats_update` events. Counters, `eventsTotal` and `eventsByType` survive a
/// restart. The `data` of every `stats_update` WebSocket message is exactly this object.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    operation_id = "getStats",
    tag = "dashboard",
    params(crate::api_docs::TokenQuery),
    responses(
        (status = 200, description = "The stats snapshot.", body = crate::api_docs::StatsSnapshot),
        (status = 401, description = "`auth.dashboard_tokens` is set and no valid token was given.",
            body = crate::api_docs::ErrorBody,
            example = json!({"error": {"code": "unauthorized",
                "message": "a dashboard token is required (Authorization: Bearer or ?token=)"}})),
    ),
    security((), ("dashboard_token" = []))
)]
pub fn route(app: Arc<App>) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "stats")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::query::<HashMap<String, String>>().or(warp::any().map(HashMap::new)).unify())
        .and(with_app(app))
        .map(|headers: http::HeaderMap, q: HashMap<String, String>, app: Arc<App>| {
            let auth = crate::auth::dashboard(
                &app.config.borrow().config.auth.dashboard_tokens,
                &headers,
                q.get("token").map(String::as_str),
            );
            let res = match auth {
                Ok(()) => json_response(http::StatusCode::OK, &app.stats_snapshot()),
                Err(e) => e.to_response(),
            };
            named(ROUTE, res)
        })
        .boxed()
}
