//! `GET /`: the built-in live dashboard page. Its HTML, CSS and JS are
//! embedded in the binary (no CDN, no build step).

use super::{bytes_response, named};
use warp::reply::Response;
use warp::Filter;

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const STYLE: &str = include_str!("../../assets/dashboard/style.css");

fn asset(route: &'static str, content_type: &'static str, body: &'static str) -> Response {
    let mut res = bytes_response(http::StatusCode::OK, content_type, body.as_bytes().to_vec());
    res.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    named(route, res)
}

pub fn routes() -> warp::filters::BoxedFilter<(Response,)> {
    let index = warp::path::end().and(warp::get()).map(|| asset("/", "text/html; charset=utf-8", INDEX));
    let js = warp::path!("assets" / "app.js")
        .and(warp::get())
        .map(|| asset("/assets/app.js", "text/javascript; charset=utf-8", APP_JS));
    let css = warp::path!("assets" / "style.css")
        .and(warp::get())
        .map(|| asset("/assets/style.css", "text/css; charset=utf-8", STYLE));
    index.or(js).unify().or(css).unify().boxed()
}
