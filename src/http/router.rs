//! Mounting routes. [`Router::mount`] is the only way to add a route: it
//! checks the method, names every response of the route (the `route` label
//! of the HTTP metrics and the request span, never the raw path) and records
//! the path, so the list of known paths (404 or 405?) is the list of routes.
//! A request no route matches is marked `Unmatched` explicitly and then
//! answered 405 (known path, wrong method) or 404.

use super::reply::{json_response, ErrorResponse};
use crate::error::{ApiError, ErrorCode};
use http::Method;
use std::sync::Arc;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The matched route, attached to each response for the HTTP metrics (never
/// the raw path, so label cardinality stays bounded).
#[derive(Debug, Clone, Copy)]
pub struct RouteName(pub &'static str);

/// Route name of a request to a known path with a method it does not take.
pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
/// Route name of a request to no known path.
pub const NOT_FOUND: &str = "not_found";
/// Route name of a response that carries none (cannot happen through [`Router`]).
pub const UNMATCHED: &str = "unmatched";

/// Marks the response of the fallback route: no mounted route matched.
#[derive(Debug, Clone, Copy)]
struct Unmatched;

/// Routes being mounted, in match order (the first mounted is tried first:
/// mount the hot ones first).
#[derive(Default)]
pub struct Router {
    filters: Vec<BoxedFilter<(Response,)>>,
    known: Vec<(&'static str, Method)>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts `handler` for `method` requests to `path`, a fixed path (as
    /// warp's `path!` matches it: a trailing `/` is allowed). `handler` sees
    /// only requests that match; every response it gives is named `path`.
    pub fn mount<F>(self, method: Method, path: &'static str, handler: F) -> Self
    where
        F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        let m = method.clone();
        self.add(method, path, on(Some(m), path).and(handler))
    }

    /// Mounts `handler` on `path` for every method (documented and counted
    /// as known for `method`): for a path that answers the same to all, such
    /// as `/metrics` when it is served on another listener.
    pub fn mount_all_methods<F>(self, method: Method, path: &'static str, handler: F) -> Self
    where
        F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        self.add(method, path, on(None, path).and(handler))
    }

    /// Mounts `filter`, which matches the path itself, for `method` requests
    /// to the pattern `path` (`{name}` stands for one segment): for routes a
    /// fixed path cannot say, such as `/docs/{file}` or `/docs` apart from
    /// `/docs/`. Every response it gives is named `path`.
    pub fn mount_matching<F>(self, method: Method, path: &'static str, filter: F) -> Self
    where
        F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        let m = method.clone();
        self.add(method, path, on(Some(m), "").and(filter))
    }

    fn add<F>(mut self, method: Method, path: &'static str, filter: F) -> Self
    where
        F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        let named = filter.map(move |mut res: Response| {
            res.extensions_mut().insert(RouteName(path));
            res
        });
        self.filters.push(named.boxed());
        self.known.push((path, method));
        self
    }

    /// The routes and then `fallback` for requests none matches, as one filter.
    fn chain(self, fallback: BoxedFilter<(Response,)>) -> (BoxedFilter<(Response,)>, Vec<(&'static str, Method)>) {
        // Nested to the right, so the first route is reached through one `or`.
        let filter = self.filters.into_iter().rev().fold(fallback, |rest, f| f.or(rest).unify().boxed());
        (filter, self.known)
    }

    /// The routes of the main listener. Paths answered outside them (the
    /// WebSocket upgrades, `upgraded`, GET only) count as known too.
    pub fn build(self, upgraded: &[&'static str]) -> Routes {
        let unmatched = warp::any()
            .map(|| {
                let mut res = Response::default();
                res.extensions_mut().insert(Unmatched);
                res
            })
            .boxed();
        let (filter, mut known) = self.chain(unmatched);
        known.extend(upgraded.iter().map(|p| (*p, Method::GET)));
        Routes { filter, known: known.into() }
    }

    /// The routes, then `fallback` (named [`UNMATCHED`]) for every request
    /// none matches: for a listener without 404/405 logic.
    pub fn build_with_fallback(self, fallback: fn() -> Response) -> BoxedFilter<(Response,)> {
        let fallback = warp::any()
            .map(move || {
                let mut res = fallback();
                res.extensions_mut().insert(RouteName(UNMATCHED));
                res
            })
            .boxed();
        self.chain(fallback).0
    }
}

/// The mounted routes and every known (path, method).
#[derive(Clone)]
pub struct Routes {
    filter: BoxedFilter<(Response,)>,
    known: Arc<[(&'static str, Method)]>,
}

impl Routes {
    /// Every (path pattern, method) the server answers: the mounted routes
    /// and the upgraded paths.
    pub fn known(&self) -> &[(&'static str, Method)] {
        &self.known
    }

    /// Answers `req`: the response and its route name. A request no route
    /// matched gets a 405 with `Allow` on a known path, else a 404.
    pub async fn respond<B>(&self, req: http::Request<B>) -> (&'static str, Response)
    where
        B: hyper::body::Body + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let mut svc = warp::service(self.filter.clone());
        let res = svc.call(req).await.unwrap_or_else(|never| match never {});
        if res.extensions().get::<Unmatched>().is_some() {
            return self.unmatched(&path, &method);
        }
        (res.extensions().get::<RouteName>().map_or(UNMATCHED, |r| r.0), res)
    }

    /// 405 with `Allow` for a known path, else 404.
    fn unmatched(&self, path: &str, method: &Method) -> (&'static str, Response) {
        if let Some((_, allowed)) = self.known.iter().find(|(p, _)| path_matches(p, path)) {
            let err = ApiError::new(ErrorCode::NotFound, format!("{method} is not supported on {path}; use {allowed}"));
            let mut res = json_response(http::StatusCode::METHOD_NOT_ALLOWED, &err.body());
            res.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_str(allowed.as_str()).expect("a method is a header value"),
            );
            return (METHOD_NOT_ALLOWED, res);
        }
        (NOT_FOUND, ApiError::new(ErrorCode::NotFound, format!("no route for {method} {path}")).to_response())
    }
}

/// Requests with `method` (any if `None`) and, unless `path` is empty, the
/// path `path` or `path` + `/` (as warp's `path!` matches).
fn on(method: Option<Method>, path: &'static str) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    assert!(!path.contains('{'), "{path}: a pattern with a parameter is mounted with mount_matching");
    warp::method()
        .and(warp::path::full())
        .and_then(move |got: Method, full: FullPath| {
            let full = full.as_str();
            let ok = method.as_ref().is_none_or(|m| *m == got)
                && (path.is_empty() || full == path || (path != "/" && full.strip_suffix('/') == Some(path)));
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            }
        })
        .untuple_one()
}

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

    fn ok() -> Response {
        Response::new("ok".into())
    }

    fn request(method: Method, path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
        http::Request::builder().method(method).uri(path).body(http_body_util::Empty::new()).unwrap()
    }

    #[tokio::test]
    async fn mounted_routes_are_named_and_unmatched_is_404_or_405() {
        let routes = Router::new()
            .mount(Method::GET, "/a", warp::any().map(ok).boxed())
            .mount_matching(Method::POST, "/b/{x}", warp::path!("b" / String).map(|_| ok()))
            .build(&["/ws"]);
        assert_eq!(routes.known().len(), 3);
        for path in ["/a", "/a/"] {
            let (name, res) = routes.respond(request(Method::GET, path)).await;
            assert_eq!((name, res.status().as_u16()), ("/a", 200), "{path}");
        }
        let (name, _) = routes.respond(request(Method::GET, "/a/x")).await;
        assert_eq!(name, NOT_FOUND);
        let (name, res) = routes.respond(request(Method::POST, "/b/1")).await;
        assert_eq!((name, res.status().as_u16()), ("/b/{x}", 200));
        let (name, res) = routes.respond(request(Method::POST, "/a")).await;
        assert_eq!((name, res.status().as_u16()), (METHOD_NOT_ALLOWED, 405));
        assert_eq!(res.headers()[http::header::ALLOW], "GET");
        let (name, res) = routes.respond(request(Method::GET, "/b/1")).await;
        assert_eq!((name, res.status().as_u16()), (METHOD_NOT_ALLOWED, 405));
        assert_eq!(res.headers()[http::header::ALLOW], "POST");
        let (name, res) = routes.respond(request(Method::DELETE, "/ws")).await;
        assert_eq!((name, res.status().as_u16()), (METHOD_NOT_ALLOWED, 405));
        let (name, res) = routes.respond(request(Method::GET, "/c")).await;
        assert_eq!((name, res.status().as_u16()), (NOT_FOUND, 404));
    }
}
