//! `GET /api/v1/stats` (contract section 3).

use super::{dashboard_auth, json_response, named, with_app};
use crate::server::App;
use std::collections::HashMap;
use std::sync::Arc;
use warp::reply::Response;
use warp::Filter;

pub const ROUTE: &str = "/api/v1/stats";

pub fn route(app: Arc<App>) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "stats")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::query::<HashMap<String, String>>().or(warp::any().map(HashMap::new)).unify())
        .and(with_app(app))
        .map(|headers: http::HeaderMap, q: HashMap<String, String>, app: Arc<App>| {
            let res = match dashboard_auth(&app, &headers, q.get("token").map(String::as_str)) {
                Ok(()) => json_response(http::StatusCode::OK, &app.stats_snapshot()),
                Err(e) => e.to_response(),
            };
            named(ROUTE, res)
        })
        .boxed()
}
