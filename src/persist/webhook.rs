//! POSTs each batch to a URL as a JSON array of events, for deployments
//! whose real store sits behind an HTTP endpoint.
//!
//! A batch is stored when the target answers 2xx. Server errors (5xx), 429,
//! 408, timeouts and connection errors are retried with exponential backoff
//! and full jitter; any other answer is the target refusing the batch, and
//! retrying would only repeat the refusal. The target must tolerate seeing a
//! batch twice (an attempt that timed out may have been stored); the
//! `X-Sidewire-Batch: <first_seq>-<last_seq>` header and every event's `seq`
//! let it dedupe.
//!
//! The URL may carry credentials (user info, a token in the query): it is
//! only ever logged or shown through [`redact_url`].

use super::{Batch, PersistCallback, PersistError};
use crate::config::SecretUrl;
use crate::event::json_array;
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use std::time::Duration;

const NAME: &str = "webhook";

/// Longest wait between two attempts, whatever `backoff`, the attempt count
/// or a `Retry-After` say: a batch holds up the pipeline while it waits.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Timeout of the health check's `HEAD`: short, so `/readyz` answers fast.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes of a success body read (so the connection can be reused)
/// and of a refusal body quoted in the error.
const DRAIN_LIMIT: usize = 64 * 1024;
const QUOTE_LIMIT: usize = 256;

/// Batch range header, so the target can dedupe a batch sent twice.
const BATCH_HEADER: &str = "x-sidewire-batch";

/// How the `webhook` plugin is set up (from `[persist] webhook_*`).
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Target of the POSTs; may carry credentials (exposed only to build
    /// the request URL).
    pub url: SecretUrl,
    /// Per-attempt timeout: connecting, sending and the response together.
    pub timeout: Duration,
    /// Retries after the first failed attempt; 0 tries once.
    pub max_retries: u32,
    /// Ceiling of the first retry's jittered delay; doubles per retry.
    pub backoff: Duration,
}

/// The webhook plugin: one shared HTTP client (its connection pool keeps
/// connections to the target open between batches).
pub struct WebhookPlugin {
    client: reqwest::Client,
    url: Url,
    /// The URL fit for logs and error messages.
    shown_url: String,
    timeout: Duration,
    max_retries: u32,
    backoff: Duration,
}

impl std::fmt::Debug for WebhookPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPlugin")
            .field("url", &self.shown_url)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

fn err(e: impl std::fmt::Display) -> PersistError {
    PersistError::unavailable(NAME, e)
}

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    Stored,
    /// Worth trying again; `retry_after` is the target's own hint.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The target refused the batch; trying again would not change that.
    Refused(String),
}

impl WebhookPlugin {
    /// Checks the URL and builds the client; sends nothing.
    pub fn new(opts: WebhookOptions) -> Result<Self, PersistError> {
        let shown_url = opts.url.to_string();
        let url = Url::parse(opts.url.expose()).map_err(|e| err(format!("invalid URL {shown_url}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(format!("URL {shown_url} must be http:// or https://")));
        }
        let client = reqwest::Client::builder()
            .user_agent(format!("sidewire/{}", crate::version::VERSION))
            // A 301/302 would turn the POST into a GET whose 200 looks like
            // a stored batch; a moved target is a config error instead.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.timeout)
            .build()
            .map_err(|e| err(format!("cannot build the HTTP client: {}", describe(e, opts.timeout))))?;
        Ok(Self { client, url, shown_url, timeout: opts.timeout, max_retries: opts.max_retries, backoff: opts.backoff })
    }

    async fn post_once(&self, body: Bytes, batch_range: &str) -> Attempt {
        let sent = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(BATCH_HEADER, batch_range)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return Attempt::Retry { reason: describe(e, self.timeout), retry_after: None },
        };
        let status = response.status();
        if status.is_success() {
            // The batch is stored; reading a small body lets the connection
            // go back to the pool. Its errors no longer matter.
            let mut read = 0;
            while let Ok(Some(chunk)) = response.chunk().await {
                read += chunk.len();
                if read > DRAIN_LIMIT {
                    break;
                }
            }
            return Attempt::Stored;
        }
        if is_retryable(status) {
            let retry_after = retry_after(response.headers());
            return Attempt::Retry { reason: format!("answered {status}"), retry_after };
        }
        let quote = quote_body(&mut response).await;
        Attempt::Refused(format!("answered {status}{quote}"))
    }
}

/// Statuses that say "not now" rather than "never".
fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

/// `Retry-After` in seconds (the HTTP-date form is rare for webhooks and
/// ignored: the jittered backoff applies then).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// The start of a refusal's body, as one printable line, to say why.
async fn quote_body(response: &mut reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < QUOTE_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(QUOTE_LIMIT);
    let text: String = String::from_utf8_lossy(&body).chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// A transport error without the URL (reqwest puts the full URL, with any
/// credentials, into its messages) and with its root cause, which is the
/// useful part ("Connection refused").
fn describe(e: reqwest::Error, timeout: Duration) -> String {
    let e = e.without_url();
    let what = if e.is_timeout() {
        format!("timed out after {} ms", timeout.as_millis())
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        e.to_string()
    };
    let mut root = None;
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        root = Some(s);
        source = s.source();
    }
    match root {
        Some(root) if !e.is_timeout() => format!("{what}: {root}"),
        _ => what,
    }
}

/// The wait before retry number `retry` (0-based): full jitter, uniformly
/// random up to `backoff * 2^retry`, capped at [`MAX_BACKOFF`], so that many
/// sidecars failing together do not hammer a recovering target in step. A
/// `Retry-After` from the target is a floor (within the same cap).
fn backoff_delay(backoff: Duration, retry: u32, retry_after: Option<Duration>) -> Duration {
    let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
    let ceiling = backoff.saturating_mul(factor).min(MAX_BACKOFF);
    let ceiling_ms = ceiling.as_millis() as u64;
    let jittered = Duration::from_millis(rand::random_range(0..=ceiling_ms));
    jittered.max(retry_after.unwrap_or_default()).min(MAX_BACKOFF)
}

#[async_trait]
impl PersistCallback for WebhookPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn persist(&self, batch: &Batch) -> Result<(), PersistError> {
        let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) else {
            return Ok(());
        };
        let batch_range = format!("{}-{}", first.seq, last.seq);
        let body = Bytes::from(json_array(batch.events.iter().map(|e| &**e)));
        let attempts = self.max_retries.saturating_add(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (reason, hint) = match self.post_once(body.clone(), &batch_range).await {
                Attempt::Stored => return Ok(()),
                Attempt::Refused(reason) => {
                    return Err(err(format!(
                        "POST {} of batch {batch_range} refused (not retried): {reason}",
                        self.shown_url
                    )));
                }
                Attempt::Retry { reason, retry_after } => (reason, retry_after),
            };
            if attempt >= attempts {
                return Err(err(format!(
                    "POST {} of batch {batch_range} failed after {attempts} attempt(s): {reason}",
                    self.shown_url
                )));
            }
            let delay = backoff_delay(self.backoff, attempt - 1, hint);
            // Debug, not warn: a target that stays down fails every batch, and
            // the final failure is logged (rate-limited) by the pipeline with
            // this reason in it.
            tracing::debug!(url = %self.shown_url, batch = %batch_range, attempt, attempts, error = %reason,
                retry_in_ms = delay.as_millis() as u64, "webhook attempt failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// `HEAD` on the URL: any answer below 500 means the target is up (many
    /// webhook endpoints answer 404 or 405 to HEAD, which is fine), so
    /// `/readyz` follows the target.
    async fn health(&self) -> Result<(), PersistError> {
        match self.client.head(self.url.clone()).timeout(HEALTH_TIMEOUT).send().await {
            Ok(r) if r.status().is_server_error() => {
                Err(err(format!("HEAD {} answered {}", self.shown_url, r.status())))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(err(format!("HEAD {}: {}", self.shown_url, describe(e, HEALTH_TIMEOUT)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::stats::DurableStats;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use parking_lot::Mutex;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// What the target received.
    #[derive(Debug, Clone)]
    struct Received {
        method: hyper::Method,
        headers: hyper::HeaderMap,
        body: Bytes,
    }

    /// A real HTTP server on 127.0.0.1:0; `respond(n)` gives the status and
    /// a delay for the n-th request (0-based). Stops when dropped.
    struct Target {
        addr: SocketAddr,
        received: Arc<Mutex<Vec<Received>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Target {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Target {
        async fn start(respond: impl Fn(usize) -> (u16, Duration) + Send + Sync + 'static) -> Target {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let received = Arc::new(Mutex::new(Vec::new()));
            let respond = Arc::new(respond);
            let seen = received.clone();
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seen, respond) = (seen.clone(), respond.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, respond) = (seen.clone(), respond.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let n = {
                                let mut seen = seen.lock();
                                seen.push(Received { method: parts.method, headers: parts.headers, body });
                                seen.len() - 1
                            };
                            let (status, delay) = respond(n);
                            tokio::time::sleep(delay).await;
                            let response = Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"{\"error\":\"nope\"}")))
                                .unwrap();
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Target { addr, received, task }
        }

        fn url(&self) -> String {
            format!("http://{}/hook", self.addr)
        }

        fn received(&self) -> Vec<Received> {
            self.received.lock().clone()
        }
    }

    fn plugin(url: &str, timeout_ms: u64, max_retries: u32) -> WebhookPlugin {
        WebhookPlugin::new(WebhookOptions {
            url: SecretUrl::new(url),
            timeout: Duration::from_millis(timeout_ms),
            max_retries,
            backoff: Duration::from_millis(1),
        })
        .unwrap()
    }

    fn batch(seqs: &[u64]) -> Batch {
        let events = seqs
            .iter()
            .map(|&s| {
                let data = format!("{{\"n\":{s},\"s\":\"\\\"quoted\\\"\"}}");
                Arc::new(Event::new(s, "query_complete", crate::event::now_ms(), Some(&format!("id-{s}")), None, &data))
            })
            .collect();
        Batch { events, stats: Arc::new(DurableStats::default()) }
    }

    /// A URL on which nothing listens.
    async fn down_url(userinfo_and_query: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        if userinfo_and_query {
            format!("http://user:hunter2@{addr}/hook?token=s3cret")
        } else {
            format!("http://{addr}/hook")
        }
    }

    #[tokio::test]
    async fn retries_server_errors_then_delivers_the_exact_array() {
        let target = Target::start(|n| (if n < 2 { 500 } else { 200 }, Duration::ZERO)).await;
        let p = plugin(&target.url(), 2_000, 3);
        let b = batch(&[3, 4, 5]);
        p.persist(&b).await.unwrap();

        let got = target.received();
        assert_eq!(got.len(), 3, "two failures, then success");
        let expected = json_array(b.events.iter().map(|e| &**e));
        let parsed: serde_json::Value = serde_json::from_slice(&expected).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 3);
        for r in &got {
            assert_eq!(r.method, hyper::Method::POST);
            assert_eq!(r.body, Bytes::from(expected.clone()));
            assert_eq!(r.headers["content-type"], "application/json");
            assert_eq!(r.headers["x-sidewire-batch"], "3-5");
            assert_eq!(r.headers["user-agent"], format!("sidewire/{}", crate::VERSION).as_str());
        }
    }

    #[tokio::test]
    async fn gives_up_after_max_retries() {
        let target = Target::start(|_| (503, Duration::ZERO)).await;
        let p = plugin(&target.url(), 2_000, 2);
        let e = p.persist(&batch(&[1])).await.unwrap_err();
        assert_eq!(target.received().len(), 3, "first attempt + 2 retries");
        assert!(e.to_string().contains("3 attempt(s)") && e.to_string().contains("503"), "{e}");
    }

    #[tokio::test]
    async fn too_many_requests_is_retried() {
        let target = Target::start(|n| (if n == 0 { 429 } else { 204 }, Duration::ZERO)).await;
        plugin(&target.url(), 2_000, 1).persist(&batch(&[1])).await.unwrap();
        assert_eq!(target.received().len(), 2);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let target = Target::start(|_| (400, Duration::ZERO)).await;
        let e = plugin(&target.url(), 2_000, 5).persist(&batch(&[1, 2])).await.unwrap_err();
        assert_eq!(target.received().len(), 1);
        assert!(matches!(e, PersistError::Unavailable { plugin: "webhook", .. }));
        let msg = e.to_string();
        assert!(msg.contains("400") && msg.contains("not retried") && msg.contains("nope"), "{msg}");
    }

    #[tokio::test]
    async fn redirects_are_refused_not_followed() {
        let target = Target::start(|_| (302, Duration::ZERO)).await;
        assert!(plugin(&target.url(), 2_000, 3).persist(&batch(&[1])).await.is_err());
        assert_eq!(target.received().len(), 1);
    }

    #[tokio::test]
    async fn a_slow_target_counts_as_a_failure() {
        let target = Target::start(|_| (200, Duration::from_millis(500))).await;
        let p = plugin(&target.url(), 100, 1);
        let e = p.persist(&batch(&[1])).await.unwrap_err();
        assert!(e.to_string().contains("timed out after 100 ms"), "{e}");
        assert_eq!(target.received().len(), 2, "a timeout is retried");
    }

    #[tokio::test]
    async fn health_follows_the_target() {
        let up = Target::start(|_| (405, Duration::ZERO)).await;
        plugin(&up.url(), 1_000, 0).health().await.unwrap();
        assert_eq!(up.received()[0].method, hyper::Method::HEAD);

        let failing = Target::start(|_| (503, Duration::ZERO)).await;
        assert!(plugin(&failing.url(), 1_000, 0).health().await.is_err());

        let down = plugin(&down_url(false).await, 1_000, 0);
        assert!(down.health().await.is_err());
        assert!(down.persist(&batch(&[1])).await.is_err());
    }

    #[tokio::test]
    async fn credentials_never_show_in_debug_or_errors() {
        let url = down_url(true).await;
        let p = plugin(&url, 1_000, 1);
        let shown = [
            format!("{p:?}"),
            format!(
                "{:?}",
                WebhookOptions {
                    url: SecretUrl::new(url.clone()),
                    timeout: Duration::ZERO,
                    max_retries: 0,
                    backoff: Duration::ZERO
                }
            ),
            p.persist(&batch(&[1])).await.unwrap_err().to_string(),
            p.health().await.unwrap_err().to_string(),
        ];
        for text in shown {
            assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");
            assert!(text.contains("/hook"), "{text}");
        }
    }

    #[test]
    fn rejects_urls_it_cannot_post_to() {
        for bad in ["not a url", "ftp://example.test/x", ""] {
            assert!(plugin_result(bad).is_err(), "{bad}");
        }
        assert!(plugin_result("https://example.test/hook").is_ok());
    }

    fn plugin_result(url: &str) -> Result<WebhookPlugin, PersistError> {
        WebhookPlugin::new(WebhookOptions {
            url: SecretUrl::new(url.to_string()),
            timeout: Duration::from_secs(1),
            max_retries: 0,
            backoff: Duration::from_millis(1),
        })
    }

    #[test]
    fn backoff_doubles_with_full_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        for _ in 0..200 {
            assert!(backoff_delay(base, 0, None) <= Duration::from_millis(100));
            assert!(backoff_delay(base, 3, None) <= Duration::from_millis(800));
            assert!(backoff_delay(base, 40, None) <= MAX_BACKOFF);
            let hinted = backoff_delay(base, 0, Some(Duration::from_secs(2)));
            assert_eq!(hinted, Duration::from_secs(2), "Retry-After is a floor");
            assert_eq!(backoff_delay(base, 0, Some(Duration::from_secs(60))), MAX_BACKOFF);
        }
        // Jitter: not always the ceiling.
        let delays: std::collections::HashSet<_> = (0..50).map(|_| backoff_delay(base, 2, None)).collect();
        assert!(delays.len() > 1);
    }
}
