//! `GET /`: the built-in live dashboard page. Its HTML, CSS and JS are
//! embedded in the binary (no CDN). `assets/dashboard/app.js` is a committed
//! build output of `clients/js` (`npm run build`: the page code bundled with
//! the dashboard client); cargo needs no Node.

use super::{bytes_response, Router};
use http::Method;
use warp::reply::Response;
use warp::Filter;

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const STYLE: &str = include_str!("../../assets/dashboard/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = bytes_response(http::StatusCode::OK, content_type, body.as_bytes().to_vec());
    res.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    res
}

/// Mounts the page and its two assets.
pub fn mount(router: Router) -> Router {
    router.mount(Method::GET, "/", index()).mount(Method::GET, "/assets/app.js", app_js()).mount(
        Method::GET,
        "/assets/style.css",
        style_css(),
    )
}

/// The live dashboard page
///
/// The built-in dashboard: an HTML page (embedded in the binary, no CDN) that reads
/// `/api/v1/activity/recent` and follows `/api/v1/ws/dashboard`.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "dashboardPage",
    tag = "ui",
    responses((status = 200, description = "The dashboard page.", content((String = "text/html; charset=utf-8"))))
)]
pub fn index() -> warp::filters::BoxedFilter<(Response,)> {
    warp::any().map(|| asset("text/html; charset=utf-8", INDEX)).boxed()
}

/// The dashboard's script
#[utoipa::path(
    get,
    path = "/assets/app.js",
    operation_id = "dashboardScript",
    tag = "ui",
    responses((status = 200, description = "The dashboard's JavaScript.", content((String = "text/javascript; charset=utf-8"))))
)]
pub fn app_js() -> warp::filters::BoxedFilter<(Response,)> {
    warp::any().map(|| asset("text/javascript; charset=utf-8", APP_JS)).boxed()
}

/// The dashboard's stylesheet
#[utoipa::path(
    get,
    path = "/assets/style.css",
    operation_id = "dashboardStylesheet",
    tag = "ui",
    responses((status = 200, description = "The dashboard's CSS.", content((String = "text/css; charset=utf-8"))))
)]
pub fn style_css() -> warp::filters::BoxedFilter<(Response,)> {
    warp::any().map(|| asset("text/css; charset=utf-8", STYLE)).boxed()
}
