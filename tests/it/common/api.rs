//! REST helpers for the core tests: raw ingest requests with headers, the
//! contract's error-body check, stats, paging through activity, and polling.

use serde_json::Value;
use std::future::Future;
use std::time::{Duration, Instant};

/// A whole HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, text, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// POST /api/v1/ingest with full control of Content-Type and Authorization.
pub async fn post_ingest(
    c: &reqwest::Client,
    base: &str,
    content_type: Option<&str>,
    authorization: Option<&str>,
    body: impl Into<String>,
) -> Reply {
    let mut req = c.post(format!("{base}/api/v1/ingest")).body(body.into());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    Reply::from(req.send().await.unwrap()).await
}

/// POST a JSON value as application/json.
pub async fn post_json(c: &reqwest::Client, base: &str, body: &Value) -> Reply {
    post_ingest(c, base, Some("application/json"), None, body.to_string()).await
}

pub async fn get_reply(c: &reqwest::Client, url: &str) -> Reply {
    Reply::from(c.get(url).send().await.unwrap()).await
}

/// Asserts the contract's error body exactly:
/// `{"error": {"code", "message", "index"?}}`, and the status.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, want_index: Option<u64>) {
    assert_eq!(status, want_status, "status; body: {body}");
    let top = body.as_object().unwrap_or_else(|| panic!("error body is not an object: {body}"));
    assert_eq!(top.len(), 1, "error body must hold only `error`: {body}");
    let err = top["error"].as_object().unwrap_or_else(|| panic!("`error` is not an object: {body}"));
    for k in err.keys() {
        assert!(["code", "message", "index"].contains(&k.as_str()), "unexpected key `{k}` in {body}");
    }
    assert_eq!(err.get("code").and_then(Value::as_str), Some(want_code), "code; body: {body}");
    let msg = err.get("message").and_then(Value::as_str).unwrap_or_else(|| panic!("no message string: {body}"));
    assert!(!msg.trim().is_empty(), "empty message: {body}");
    match want_index {
        Some(i) => assert_eq!(err.get("index"), Some(&Value::from(i)), "index; body: {body}"),
        None => assert!(err.get("index").is_none(), "index must be absent: {body}"),
    }
}

/// [`assert_error`] on a [`Reply`].
pub fn assert_reply_error(r: &Reply, want_status: u16, want_code: &str, want_index: Option<u64>) {
    assert!(
        r.header("content-type").is_some_and(|ct| ct.starts_with("application/json")),
        "error content type: {:?}",
        r.headers
    );
    assert_error(r.status, &r.body, want_status, want_code, want_index);
}

/// GET /api/v1/stats (must be 200).
pub async fn stats_of(c: &reqwest::Client, base: &str) -> Value {
    let r = get_reply(c, &format!("{base}/api/v1/stats")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// One page of /api/v1/activity/recent (must be 200): (items, nextBefore).
pub async fn activity_page(c: &reqwest::Client, base: &str, query: &str) -> (Vec<Value>, Option<u64>) {
    let r = get_reply(c, &format!("{base}/api/v1/activity/recent?{query}")).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    let items = r.body["items"].as_array().unwrap_or_else(|| panic!("no items: {}", r.text)).clone();
    let next = &r.body["nextBefore"];
    assert!(r.body.as_object().unwrap().contains_key("nextBefore"), "nextBefore missing: {}", r.text);
    (items, if next.is_null() { None } else { Some(next.as_u64().expect("nextBefore is a seq")) })
}

/// Every item of /api/v1/activity/recent?{query}, newest first, following
/// `nextBefore` with pages of `page` items. Checks each page's `nextBefore`.
pub async fn activity_all(c: &reqwest::Client, base: &str, query: &str, page: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..100_000 {
        let mut q = format!("limit={page}");
        if !query.is_empty() {
            q.push('&');
            q.push_str(query);
        }
        if let Some(b) = before {
            q.push_str(&format!("&before={b}"));
        }
        let (items, next) = activity_page(c, base, &q).await;
        assert!(items.len() <= page, "page over limit");
        if let Some(n) = next {
            assert_eq!(items.len(), page, "a page with a nextBefore must be full");
            assert_eq!(Some(n), items.last().and_then(|e| e["seq"].as_u64()), "nextBefore = last seq of the page");
        }
        out.extend(items);
        match next {
            Some(n) => before = Some(n),
            None => return out,
        }
    }
    panic!("activity paging did not end");
}

/// The seqs of items.
pub fn seqs_of(items: &[Value]) -> Vec<u64> {
    items.iter().map(|e| e["seq"].as_u64().expect("seq")).collect()
}

/// Polls `check` until it is true or `timeout` passes (then panics with `what`).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A copy of `base` with SQLite replaced by the named plugin.
pub fn with_plugin(
    mut config: sidewire::config::Config,
    plugin: sidewire::config::PluginKind,
) -> sidewire::config::Config {
    config.persist.plugin = plugin;
    config
}
