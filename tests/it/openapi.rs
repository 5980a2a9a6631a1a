//! `GET /api-docs/openapi.json` and `GET /docs` against a real server
//! (contract section 6): the document is OpenAPI 3.1, it documents exactly
//! the routes the server has (both ways, so code and docs cannot drift), and
//! the docs page loads only local assets.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// (path, METHOD) of every route the server answers: the mounted routes
/// plus the WebSocket paths the server upgrades itself (`Routes::known`).
fn server_routes(app: &sidewire::app::App) -> BTreeSet<(String, String)> {
    let routes = sidewire::http::routes(app.http_state(), &sidewire::ws::PATHS);
    routes.known().iter().map(|(p, m)| (p.to_string(), m.to_string())).collect()
}

/// (path, METHOD) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.insert((path.clone(), m.to_ascii_uppercase()));
            }
        }
    }
    ops
}

/// `path` with each `{name}` replaced by the example of its path parameter.
fn fill_path(path: &str, op: &Value) -> String {
    path.split('/')
        .map(|seg| {
            let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                return seg.to_string();
            };
            let param = op["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["in"] == "path" && p["name"] == name))
                .unwrap_or_else(|| panic!("{path}: path parameter `{name}` is not documented"));
            let example = [&param["example"], &param["schema"]["example"], &param["schema"]["examples"][0]]
                .into_iter()
                .find_map(|v| v.as_str())
                .unwrap_or_else(|| panic!("{path}: path parameter `{name}` has no example to test with"));
            example.to_string()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The first JSON example of an operation's request body, if it has one.
fn body_example(op: &Value) -> Option<Value> {
    let media = &op["requestBody"]["content"]["application/json"];
    if !media["example"].is_null() {
        return Some(media["example"].clone());
    }
    media["examples"].as_object()?.values().next().map(|e| e["value"].clone())
}

#[tokio::test]
async fn openapi_document_is_31_and_documents_exactly_the_served_routes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let (status, doc) = get_json(&c, &srv.url("/api-docs/openapi.json")).await;
    assert_eq!(status, 200);
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi is {version:?}");
    assert_eq!(doc["info"]["version"], sidewire::VERSION);

    // Both ways: nothing documented that the server lacks, nothing served
    // that is not documented.
    let docs = documented(&doc);
    let served = server_routes(&srv.app);
    let undocumented: Vec<_> = served.difference(&docs).collect();
    assert!(undocumented.is_empty(), "routes the server answers but the document lacks: {undocumented:?}");
    let unserved: Vec<_> = docs.difference(&served).collect();
    assert!(unserved.is_empty(), "documented operations with no mounted route or WebSocket path: {unserved:?}");

    // Every documented operation answers on the running server, with one of
    // its documented statuses. No redirects followed: `/docs` documents its 302.
    let raw = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    for (path, method) in &docs {
        let op = &doc["paths"][path][method.to_ascii_lowercase()];
        let url = srv.url(&fill_path(path, op));
        let mut req = raw.request(method.parse().unwrap(), &url);
        if let Some(body) = body_example(op) {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        let res = req.send().await.unwrap();
        let code = res.status().as_u16();
        assert!(code != 404 && code != 405, "{method} {url} (documented as {path}) answered {code}");
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.contains_key(&code.to_string()),
            "{method} {url} answered {code}, which is not among its documented responses {:?}",
            responses.keys().collect::<Vec<_>>()
        );
    }

    // Every response above carried a route label (went through `named`).
    let metrics = c.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let unlabelled: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sidewire_http_requests_total{") && l.contains(r#"route="unmatched""#))
        .collect();
    assert!(unlabelled.is_empty(), "requests without a route label: {unlabelled:?}");

    // The 405 logic knows the templated docs route too.
    let r = c.post(srv.url("/docs/swagger-ui.css")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    // So does the WebSocket paths': only a GET may upgrade, any other method
    // is a 405 like everywhere else (not a 426 "use WebSocket").
    for path in sidewire::ws::PATHS {
        for method in ["POST", "TRACE", "DELETE"] {
            let r = c.request(method.parse().unwrap(), srv.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 405, "{method} {path}");
            assert_eq!(r.headers()["allow"], "GET", "{method} {path}");
        }
    }
    let (status, body) = get_json(&c, &srv.url("/docs/no/such/file.js")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    srv.stop().await;
}

#[tokio::test]
async fn docs_page_is_html_with_only_local_assets() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let page = c.get(srv.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page_url = page.url().clone();
    assert_eq!(page_url.path(), "/docs/", "/docs leads to /docs/");
    let ct = page.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/html"), "content-type {ct}");
    let html = page.text().await.unwrap();

    let tag = regex_lite::Regex::new(r#"(?i)<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']"#).unwrap();
    let refs: Vec<String> = tag.captures_iter(&html).map(|c| c[1].to_string()).collect();
    assert!(refs.iter().any(|r| r.ends_with(".js")), "no scripts found in {html}");
    let external: Vec<&String> = refs
        .iter()
        .filter(|r| {
            let r = r.to_ascii_lowercase();
            r.starts_with("http:") || r.starts_with("https:") || r.starts_with("//")
        })
        .collect();
    assert!(external.is_empty(), "/docs loads assets from the internet: {external:?}");
    for r in refs.iter().filter(|r| !r.starts_with("data:")) {
        let url = page_url.join(r).unwrap();
        assert_eq!(url.host_str(), page_url.host_str());
        let res = c.get(url.clone()).send().await.unwrap();
        assert_eq!(res.status(), 200, "{url}");
        assert!(!res.bytes().await.unwrap().is_empty(), "{url} is empty");
    }

    // The page reads this server's document, and no online validator.
    let init = c.get(srv.url("/docs/swagger-initializer.js")).send().await.unwrap().text().await.unwrap();
    assert!(init.contains(r#""url": "/api-docs/openapi.json""#), "{init}");
    assert!(init.contains(r#""validatorUrl": "none""#), "{init}");
    srv.stop().await;
}
