//! `GET /api/v1/activity/recent` (contract section 4).

use super::{bytes_response, with, ErrorResponse};
use crate::config::ConfigRx;
use crate::error::{ApiError, ErrorCode};
use crate::persist::EventQuery;
use std::sync::Arc;
use warp::reply::Response;
use warp::Filter;

pub const ROUTE: &str = "/api/v1/activity/recent";

/// What the activity route uses: the dashboard tokens and the activity source.
#[derive(Clone)]
pub struct State {
    pub config: ConfigRx,
    pub activity: Arc<crate::activity::Activity>,
}
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// Parsed query parameters.
#[derive(Debug, Default, PartialEq)]
pub struct Params {
    pub query: EventQuery,
    pub token: Option<String>,
}

/// Parses `limit`, `type` (repeatable), `before`, `after` (and `token`).
pub fn parse(raw: &str) -> Result<Params, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidQuery, m);
    let mut p = Params { query: EventQuery { limit: DEFAULT_LIMIT, ..Default::default() }, token: None };
    let seq = |k: &str, v: &str| -> Result<u64, ApiError> {
        v.parse::<u64>().map_err(|_| bad(format!("`{k}` must be a non-negative integer, got {v:?}")))
    };
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match &*k {
            "limit" => {
                p.query.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("`limit` must be an integer from 1 to {MAX_LIMIT}, got {v:?}")))?
            }
            "type" => {
                if !crate::event::is_event_type(&v) {
                    return Err(bad(format!("`type` {v:?} is not a valid event type")));
                }
                p.query.types.push(v.into_owned());
            }
            "before" => p.query.before = Some(seq("before", &v)?),
            "after" => p.query.after = Some(seq("after", &v)?),
            "token" => p.token = Some(v.into_owned()),
            other => return Err(bad(format!("unknown parameter `{other}` (use limit, type, before, after)"))),
        }
    }
    Ok(p)
}

/// Recent events, newest first
///
/// Served from the store when the persist plugin can answer queries; otherwise from an in-memory
/// ring of the last `activity.buffer_size` events (default 10,000). Gauge reports (`stats_update`)
/// are left out unless asked for by `type`. Page with `before` = the previous page's `nextBefore`.
#[utoipa::path(
    get,
    path = "/api/v1/activity/recent",
    operation_id = "getRecentActivity",
    tag = "dashboard",
    params(crate::schemas::ActivityQuery),
    responses(
        (status = 200, description = "One page of events, newest first.", body = crate::schemas::ActivityPage),
        (status = 400, description = "A bad or unknown query parameter (`invalid_query`).",
            body = crate::schemas::ErrorBody,
            example = json!({"error": {"code": "invalid_query",
                "message": "`limit` must be an integer from 1 to 500, got \"0\""}})),
        (status = 401, description = "`auth.dashboard_tokens` is set and no valid token was given.",
            body = crate::schemas::ErrorBody,
            example = json!({"error": {"code": "unauthorized",
                "message": "a dashboard token is required (Authorization: Bearer or ?token=)"}})),
        (status = 503, description = "The store cannot be read.", body = crate::schemas::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
            example = json!({"error": {"code": "persist_unavailable", "message": "the store cannot be read: database is locked"}})),
    ),
    security((), ("dashboard_token" = []))
)]
pub fn route(state: State) -> warp::filters::BoxedFilter<(Response,)> {
    warp::header::headers_cloned()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(with(Arc::new(state)))
        .then(|headers: http::HeaderMap, raw: String, st: Arc<State>| async move {
            match recent(&st, &headers, &raw).await {
                Ok(r) => r,
                Err(e) => e.to_response(),
            }
        })
        .boxed()
}

async fn recent(app: &State, headers: &http::HeaderMap, raw: &str) -> Result<Response, ApiError> {
    let params = parse(raw)?;
    crate::auth::dashboard(&app.config.borrow().config.auth.dashboard_tokens, headers, params.token.as_deref())?;
    let limit = params.query.limit;
    // One extra tells whether another page exists.
    let mut q = params.query;
    q.limit = limit + 1;
    let mut items = app.activity.query(&q).await.map_err(|e| {
        ApiError::new(ErrorCode::PersistUnavailable, format!("the store cannot be read: {e}"))
            .retry_after(std::time::Duration::from_secs(1))
    })?;
    let more = items.len() > limit;
    items.truncate(limit);
    let next_before = if more { items.last().map(|e| e.seq) } else { None };
    let mut body = br#"{"items":"#.to_vec();
    body.extend_from_slice(&crate::event::json_array(items.iter().map(|e| &**e)));
    body.extend_from_slice(br#","nextBefore":"#);
    body.extend_from_slice(next_before.map_or("null".to_string(), |s| s.to_string()).as_bytes());
    body.push(b'}');
    Ok(bytes_response(http::StatusCode::OK, "application/json", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let p = parse("limit=3&type=a&type=b&before=9&after=1").unwrap();
        assert_eq!(p.query.limit, 3);
        assert_eq!(p.query.types, vec!["a", "b"]);
        assert_eq!((p.query.before, p.query.after), (Some(9), Some(1)));
        assert_eq!(parse("").unwrap().query.limit, DEFAULT_LIMIT);
        for bad in ["limit=0", "limit=501", "limit=-1", "limit=ten", "limit=1.5", "before=abc", "after=xyz", "lmit=3"] {
            assert_eq!(parse(bad).unwrap_err().code, ErrorCode::InvalidQuery, "{bad}");
        }
    }
}
