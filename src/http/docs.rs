//! `GET /api-docs/openapi.json` (the OpenAPI 3.1 document, built by
//! [`crate::api_docs`] and handed in through [`super::State`]) and `GET /docs` (Swagger UI). Swagger UI's files are
//! vendored into the binary by `utoipa-swagger-ui` (feature `vendored`): the
//! page loads nothing from the internet.

use super::{bytes_response, ErrorResponse, Router};
use crate::error::{ApiError, ErrorCode};
use bytes::Bytes;
use http::Method;
use std::sync::{Arc, LazyLock};
use utoipa_swagger_ui::Config;
use warp::path::{FullPath, Tail};
use warp::reply::Response;
use warp::Filter;

pub const OPENAPI_ROUTE: &str = "/api-docs/openapi.json";
pub const DOCS_ROUTE: &str = "/docs";
pub const DOCS_INDEX_ROUTE: &str = "/docs/";
/// Route label of every Swagger UI file (bounded: never the raw path).
pub const DOCS_ASSET_ROUTE: &str = "/docs/{file}";

/// The document, serialized once on first use.
static SWAGGER_CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        Config::new([OPENAPI_ROUTE])
            // no call to validator.swagger.io: the page works offline
            .validator_url("none")
            .persist_authorization(true)
            .display_request_duration(true),
    )
});

/// Mounts the document (`openapi`, serialized), `/docs` (a redirect),
/// `/docs/` and its files.
pub fn mount(router: Router, openapi: Bytes) -> Router {
    router
        .mount(Method::GET, OPENAPI_ROUTE, warp::any().map(move || openapi_json(openapi.clone())).boxed())
        .mount_matching(Method::GET, DOCS_ROUTE, under_docs(|full, _| full == DOCS_ROUTE).map(|_| docs_redirect()))
        .mount_matching(
            Method::GET,
            DOCS_INDEX_ROUTE,
            under_docs(|full, tail| full != DOCS_ROUTE && tail.is_empty()).map(|_| docs_index()),
        )
        .mount_matching(
            Method::GET,
            DOCS_ASSET_ROUTE,
            under_docs(|_, tail| !tail.is_empty()).map(|tail: String| docs_asset(&tail)),
        )
}

/// A request under `/docs` for which `pick(full path, tail)` holds; extracts the tail.
fn under_docs(
    pick: fn(&str, &str) -> bool,
) -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::path("docs").and(warp::path::full()).and(warp::path::tail()).and_then(move |full: FullPath, tail: Tail| {
        let picked = if pick(full.as_str(), tail.as_str()) {
            Ok(tail.as_str().to_string())
        } else {
            Err(warp::reject::not_found())
        };
        async move { picked }
    })
}

/// The OpenAPI document
///
/// This API as an OpenAPI 3.1 document, generated from the code: every HTTP endpoint and schema.
#[utoipa::path(
    get,
    path = "/api-docs/openapi.json",
    operation_id = "openApiDocument",
    tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content((Object = "application/json"))))
)]
pub fn openapi_json(document: Bytes) -> Response {
    let mut res = bytes_response(http::StatusCode::OK, "application/json", Vec::new());
    *res.body_mut() = document.into();
    res
}

/// The interactive API docs (redirect)
///
/// Redirects to `/docs/`, the Swagger UI page, so that its relative asset links resolve.
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docsRedirect",
    tag = "docs",
    responses((status = 302, description = "Found: go to `/docs/`.",
        headers(("Location" = String, description = "`/docs/`"))))
)]
pub fn docs_redirect() -> Response {
    let mut res = bytes_response(http::StatusCode::FOUND, "text/plain; charset=utf-8", b"see /docs/\n".to_vec());
    res.headers_mut().insert(http::header::LOCATION, http::HeaderValue::from_static(DOCS_INDEX_ROUTE));
    res
}

/// The interactive API docs
///
/// Swagger UI for this document. Every asset is served by sidewire itself (no CDN): it works with
/// no internet access.
#[utoipa::path(
    get,
    path = "/docs/",
    operation_id = "docsPage",
    tag = "docs",
    responses((status = 200, description = "The Swagger UI page.", content((String = "text/html"))))
)]
pub fn docs_index() -> Response {
    swagger_file("")
}

/// A Swagger UI asset
///
/// The scripts, stylesheets and images of the docs page (`swagger-ui-bundle.js`,
/// `swagger-ui.css`, `swagger-initializer.js`, ...), embedded in the binary.
#[utoipa::path(
    get,
    path = "/docs/{file}",
    operation_id = "docsAsset",
    tag = "docs",
    params(("file" = String, Path, description = "A file of the Swagger UI distribution.", example = "swagger-ui.css")),
    responses(
        (status = 200, description = "The file, with its content type (JavaScript, CSS, PNG, HTML)."),
        (status = 404, description = "No such file.", body = crate::schemas::ErrorBody,
            example = json!({"error": {"code": "not_found", "message": "no Swagger UI file `nope.js`"}})),
    )
)]
pub fn docs_asset(file: &str) -> Response {
    swagger_file(file)
}

fn swagger_file(file: &str) -> Response {
    match utoipa_swagger_ui::serve(file, SWAGGER_CONFIG.clone()) {
        Ok(Some(f)) => {
            let mut res = Response::new(
                match f.bytes {
                    std::borrow::Cow::Borrowed(b) => Bytes::from_static(b),
                    std::borrow::Cow::Owned(v) => Bytes::from(v),
                }
                .into(),
            );
            let h = res.headers_mut();
            if let Ok(ct) = http::HeaderValue::from_str(&f.content_type) {
                h.insert(http::header::CONTENT_TYPE, ct);
            }
            if f.gzpipped {
                h.insert(http::header::CONTENT_ENCODING, http::HeaderValue::from_static("gzip"));
            }
            // The page and its config change with the binary; the big bundles
            // may be cached for a while.
            let cache = if file.is_empty() || file.ends_with(".html") || file == "swagger-initializer.js" {
                "no-cache"
            } else {
                "public, max-age=3600"
            };
            h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static(cache));
            res
        }
        Ok(None) => ApiError::new(ErrorCode::NotFound, format!("no Swagger UI file `{file}`")).to_response(),
        Err(e) => {
            tracing::error!(error = %e, file, "cannot serve a Swagger UI file");
            let mut res = bytes_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("cannot serve {file}: {e}").into_bytes(),
            );
            res.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swagger_files_are_embedded_and_configured() {
        let index = docs_index();
        assert_eq!(index.status(), 200);
        assert!(index.headers()[http::header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        let init = docs_asset("swagger-initializer.js");
        assert_eq!(init.status(), 200);
        assert_eq!(docs_asset("swagger-ui-bundle.js").status(), 200);
        assert_eq!(docs_asset("no-such-file.js").status(), 404);
        let redirect = docs_redirect();
        assert_eq!(redirect.status(), 302);
        assert_eq!(redirect.headers()[http::header::LOCATION], "/docs/");
    }
}
