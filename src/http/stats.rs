//! `GET /api/v1/stats` (contract section 3).

use super::{json_response, with, ErrorResponse};
use crate::config::ConfigRx;
use std::collections::HashMap;
use std::sync::Arc;
use warp::reply::Response;
use warp::Filter;

pub const ROUTE: &str = "/api/v1/stats";

/// What the stats route uses: the dashboard tokens and counter rules (from
/// the config) and the stats.
#[derive(Clone)]
pub struct State {
    pub config: ConfigRx,
    pub stats: Arc<crate::stats::Stats>,
}

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
    params(crate::schemas::TokenQuery),
    responses(
        (status = 200, description = "The stats snapshot.", body = crate::schemas::StatsSnapshot),
        (status = 401, description = "`auth.dashboard_tokens` is set and no valid token was given.",
            body = crate::schemas::ErrorBody,
            example = json!({"error": {"code": "unauthorized",
                "message": "a dashboard token is required (Authorization: Bearer or ?token=)"}})),
    ),
    security((), ("dashboard_token" = []))
)]
pub fn route(state: State) -> warp::filters::BoxedFilter<(Response,)> {
    warp::header::headers_cloned()
        .and(warp::query::<HashMap<String, String>>().or(warp::any().map(HashMap::new)).unify())
        .and(with(Arc::new(state)))
        .map(|headers: http::HeaderMap, q: HashMap<String, String>, st: Arc<State>| {
            // One borrow, released at once. A borrow in the `match` below
            // would live through its arms, and a second one there is a
            // recursive read of the watch's lock: with a reload waiting to
            // write, the second read waits for the writer and the writer
            // for the first read, and both worker threads hang.
            let live = st.config.borrow().clone();
            match crate::auth::dashboard(
                &live.config.auth.dashboard_tokens,
                &headers,
                q.get("token").map(String::as_str),
            ) {
                Ok(()) => json_response(http::StatusCode::OK, &st.stats.snapshot(&live.counters)),
                Err(e) => e.to_response(),
            }
        })
        .boxed()
}
