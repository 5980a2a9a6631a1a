//! The HTTP API: one file per resource, assembled into one warp filter.
//! Every error leaves through [`ApiError`] as the contract's error body.

pub mod activity;
pub mod docs;
pub mod health;
pub mod ingest;
pub mod stats;
pub mod ui;

use crate::error::{ApiError, ErrorCode};
use crate::server::App;
use serde::Serialize;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::Filter;

/// The matched route, attached to each response for the HTTP metrics (never
/// the raw path, so label cardinality stays bounded).
#[derive(Debug, Clone, Copy)]
pub struct RouteName(pub &'static str);

/// A JSON response.
pub fn json_response<T: Serialize + ?Sized>(status: http::StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("response bodies serialize");
    bytes_response(status, "application/json", bytes)
}

pub fn bytes_response(status: http::StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    res
}

/// Tags a response with its route name.
pub fn named(route: &'static str, mut res: Response) -> Response {
    res.extensions_mut().insert(RouteName(route));
    res
}

pub fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// Every HTTP route but the WebSocket (which the server upgrades itself).
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    ingest::route(app.clone())
        .or(stats::route(app.clone()))
        .unify()
        .or(activity::route(app.clone()))
        .unify()
        .or(health::routes(app.clone()))
        .unify()
        .or(ui::routes())
        .unify()
        .or(docs::routes())
        .unify()
        .recover(recover)
        .unify()
        .boxed()
}

/// Every HTTP route and its method (the WebSocket paths, [`crate::ws::PATHS`],
/// are upgraded before routing), for telling 405 from 404. A `{name}` segment
/// stands for any one segment. The OpenAPI document must list exactly these
/// plus the WebSocket paths (`tests/openapi.rs` checks it).
pub const KNOWN: &[(&str, &str)] = &[
    ("/", "GET"),
    ("/assets/app.js", "GET"),
    ("/assets/style.css", "GET"),
    ("/api/v1/ingest", "POST"),
    ("/api/v1/stats", "GET"),
    ("/api/v1/activity/recent", "GET"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/api-docs/openapi.json", "GET"),
    ("/docs", "GET"),
    ("/docs/", "GET"),
    ("/docs/{file}", "GET"),
];

/// Whether `path` matches the route `pattern` (`{name}` matches one non-empty segment).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.starts_with('{') && a.ends_with('}') => {
                if b.is_empty() {
                    return false;
                }
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Turns warp's rejections into the contract's error body: 405 with `Allow`
/// for a known path (a warp route or a WebSocket path, which only a GET may
/// upgrade), else 404.
pub async fn recover_path(path: &str, method: &http::Method) -> Response {
    let ws = crate::ws::PATHS.iter().find(|p| **p == path).map(|p| (*p, "GET"));
    if let Some((_, allowed)) = KNOWN.iter().copied().find(|(p, _)| path_matches(p, path)).or(ws) {
        let mut res = ApiError::new(ErrorCode::NotFound, format!("{method} is not supported on {path}; use {allowed}"))
            .with_status(http::StatusCode::METHOD_NOT_ALLOWED)
            .to_response();
        res.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allowed));
        return named("method_not_allowed", res);
    }
    named("not_found", ApiError::new(ErrorCode::NotFound, format!("no route for {method} {path}")).to_response())
}

/// Rejections that reach here matched no route: the server replaces this
/// response with a precise 404 or 405 (it knows the path and method).
async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    if let Some(e) = rejection.find::<ApiError>() {
        return Ok(e.to_response());
    }
    Ok(named(UNMATCHED, ApiError::new(ErrorCode::NotFound, "no such route").to_response()))
}

/// Route name of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns() {
        assert!(path_matches("/docs/{file}", "/docs/swagger-ui.css"));
        assert!(!path_matches("/docs/{file}", "/docs/"));
        assert!(!path_matches("/docs/{file}", "/docs/a/b"));
        assert!(!path_matches("/docs/{file}", "/docs"));
        assert!(path_matches("/docs/", "/docs/"));
        assert!(!path_matches("/docs/", "/docs"));
        assert!(path_matches("/", "/"));
        assert!(!path_matches("/", "/x"));
    }
}
