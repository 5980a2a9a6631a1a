//! `POST /api/v1/ingest` (contract section 2).
//!
//! Checks run cheapest first: auth, content type, declared length; then the
//! body is read chunk by chunk and refused as soon as it passes
//! `ingest.max_body_bytes` (nothing larger is ever buffered); then parsed and
//! validated whole, so a request is all or nothing.

use super::{json_response, with, ErrorResponse};
use crate::config::ConfigRx;
use crate::conn::RequestDeadline;
use crate::error::{ApiError, ErrorCode};
use crate::event::{NewEvent, Rules};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::Value;
use std::sync::Arc;
use tracing::Instrument;
use warp::reply::Response;
use warp::Filter;

pub const ROUTE: &str = "/api/v1/ingest";

/// What ingest uses: auth and limits (from the config), the pipeline, metrics.
#[derive(Clone)]
pub struct State {
    pub config: ConfigRx,
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
}

/// The body formats the hook takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One event or an array of events.
    Json,
    /// One event per line.
    Ndjson,
}

/// Ingest events from the backend
///
/// Body: one event object or a JSON array of events (`Content-Type: application/json`, also assumed
/// when the header is absent), or one event per line (`Content-Type: application/x-ndjson`; blank
/// lines are skipped but count for `index`). At most `ingest.max_batch` events (default 1000) and
/// `ingest.max_body_bytes` (default 1 MiB) per request.
///
/// A request is all or nothing: either every event in it is accepted, or none is. With the default
/// `persist.ack = "durable"` the 202 comes only after the persist callback has stored every event;
/// with `persist.ack = "queued"` once the events sit in the bounded in-memory queue.
///
/// Duplicates: an event whose `id` equals that of an event already accepted (within the store's
/// dedupe window) is not stored or broadcast again; it counts in `duplicates` and reports its first
/// seq, so a client that retries after a timeout never doubles an event.
///
/// An event of type `stats_update` is a gauge report: each numeric top-level field of its `data` sets
/// the gauge of that name (a name that is a counter or built-in stat is a 400 `reserved_stat`).
#[utoipa::path(
    post,
    path = "/api/v1/ingest",
    operation_id = "ingest",
    tag = "ingest",
    request_body(
        description = "One event, an array of events, or NDJSON (one event per line).",
        content(
            (crate::schemas::IngestBody = "application/json", examples(
                ("one" = (summary = "One event", value = json!(
                    {"type": "ingestion_complete", "data": {"file": "report.pdf", "nodesCreated": 12},
                     "timestamp": "2025-12-31T20:00:00Z", "id": "ingest-7f3a", "source": "backend-1"}))),
                ("batch" = (summary = "A batch", value = json!([
                    {"type": "query_complete", "data": {"ms": 120}},
                    {"type": "error", "data": {"message": "disk full"}, "id": "err-1"}]))),
                ("gauges" = (summary = "A gauge report", value = json!(
                    {"type": "stats_update", "data": {"totalNodes": 45}})))
            )),
            (crate::schemas::IngestBatch = "application/x-ndjson", example = json!(
                "{\"type\":\"query_complete\",\"data\":{\"ms\":120}}\n{\"type\":\"error\",\"id\":\"err-1\"}\n"))
        )
    ),
    responses(
        (status = 202, description = "Accepted (stored, with the default `persist.ack = \"durable\"`).",
            body = crate::schemas::IngestResult,
            example = json!({"accepted": 2, "duplicates": 1, "seqs": [41, 12, 42]})),
        (status = 400, description = "Malformed JSON, a rule of the event broken, or an empty batch. \
            `index` is the 0-based index of the first bad event (or NDJSON line).",
            body = crate::schemas::ErrorBody,
            examples(
                ("invalid_event" = (value = json!({"error": {"code": "invalid_event",
                    "message": "event 1: unknown field `tpye` (allowed: type, data, timestamp, id, source)", "index": 1}}))),
                ("invalid_json" = (value = json!({"error": {"code": "invalid_json",
                    "message": "body is not valid JSON: EOF while parsing an object at line 1 column 1"}}))),
                ("empty_batch" = (value = json!({"error": {"code": "empty_batch", "message": "the request holds no events"}}))),
                ("reserved_type" = (value = json!({"error": {"code": "reserved_type",
                    "message": "event 0: field `type`: `pong` is sent by the server only", "index": 0}}))),
                ("reserved_stat" = (value = json!({"error": {"code": "reserved_stat",
                    "message": "event 0: gauge `eventsTotal` is the name of a built-in stat or counter", "index": 0}})))
            )),
        (status = 401, description = "`auth.ingest_tokens` is set and the bearer token is missing or wrong.",
            body = crate::schemas::ErrorBody,
            example = json!({"error": {"code": "unauthorized",
                "message": "a valid ingest token is required: Authorization: Bearer <token>"}})),
        (status = 408, description = "The request (head and body) did not arrive within `server.request_timeout_secs` \
            of its first byte; the connection is closed after this answer.",
            body = crate::schemas::ErrorBody,
            example = json!({"error": {"code": "request_timeout",
                "message": "the request body did not arrive within server.request_timeout_secs (30 s)"}})),
        (status = 413, description = "The body is over `ingest.max_body_bytes` or the batch over `ingest.max_batch`.",
            body = crate::schemas::ErrorBody,
            example = json!({"error": {"code": "payload_too_large",
                "message": "1001 events in one request; ingest.max_batch is 1000"}})),
        (status = 415, description = "A content type other than `application/json` or `application/x-ndjson`.",
            body = crate::schemas::ErrorBody,
            example = json!({"error": {"code": "unsupported_media_type",
                "message": "Content-Type `text/plain` is not supported; use application/json or application/x-ndjson"}})),
        (status = 503, description = "Persistence is down or its queue is full; nothing was accepted. Retry after `Retry-After` seconds.",
            body = crate::schemas::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
            example = json!({"error": {"code": "persist_unavailable",
                "message": "the persist queue is full (100000 events waiting); retry later"}})),
    ),
    security((), ("ingest_token" = []))
)]
pub fn route(state: State) -> warp::filters::BoxedFilter<(Response,)> {
    warp::header::headers_cloned()
        .and(warp::body::stream())
        .and(warp::ext::optional::<RequestDeadline>())
        .and(with(Arc::new(state)))
        .then(|headers: http::HeaderMap, body, deadline: Option<RequestDeadline>, app: Arc<State>| async move {
            let mut body_read = false;
            let mut res = match ingest(&app, &headers, body, deadline, &mut body_read).await {
                Ok(outcome) => json_response(http::StatusCode::ACCEPTED, &outcome),
                Err(e) => e.to_response(),
            };
            if res.status() == http::StatusCode::REQUEST_TIMEOUT {
                app.metrics
                    .http_timeouts_total
                    .with_label_values(&[crate::metrics::TimeoutPhase::RequestBody.label()])
                    .inc();
            }
            if !body_read {
                // Refused before the whole body was read (401, 415, 413,
                // 408): the rest of it may still be on its way, so the
                // connection cannot carry another request. Saying so keeps
                // a keep-alive client from sending its next request into a
                // connection that is about to close.
                res.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            app.metrics.ingest_requests_total.with_label_values(&[res.status().as_str()]).inc();
            res
        })
        .boxed()
}

async fn ingest<S, B>(
    app: &State,
    headers: &http::HeaderMap,
    body: S,
    deadline: Option<RequestDeadline>,
    body_read: &mut bool,
) -> Result<crate::pipeline::IngestOutcome, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let live = app.config.borrow().clone();
    let cfg = &live.config;
    crate::auth::ingest(&cfg.auth.ingest_tokens, headers)?;
    let format = body_format(headers)?;
    let max = cfg.ingest.max_body_bytes;
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        if len > max as u64 {
            return Err(too_large_body(max));
        }
    }
    let bytes = match deadline {
        Some(RequestDeadline(at)) => tokio::time::timeout_at(at, read_limited(body, max)).await.map_err(|_| {
            ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within server.request_timeout_secs ({} s)",
                    cfg.server.request_timeout_secs
                ),
            )
        })??,
        None => read_limited(body, max).await?,
    };
    *body_read = true;
    let events = parse_body(&bytes, format, cfg.ingest.max_batch, &live.rules)?;
    let span = tracing::info_span!("ingest", events = events.len());
    app.pipeline.submit(events).instrument(span).await
}

fn too_large_body(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than ingest.max_body_bytes ({max} bytes)"),
    )
}

/// The format named by `Content-Type`; a missing header is taken as JSON.
pub fn body_format(headers: &http::HeaderMap) -> Result<BodyFormat, ApiError> {
    let Some(v) = headers.get(http::header::CONTENT_TYPE) else { return Ok(BodyFormat::Json) };
    let v = v.to_str().unwrap_or("");
    let mime = v.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson" => Ok(BodyFormat::Ndjson),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Content-Type `{v}` is not supported; use application/json or application/x-ndjson"),
        )),
    }
}

/// Reads the body, failing with 413 as soon as it passes `max` bytes.
async fn read_limited<S, B>(mut body: S, max: usize) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("could not read the body: {e}")))?;
        if out.len() + chunk.remaining() > max {
            return Err(too_large_body(max));
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

/// Parses and validates a whole body. Errors carry the 0-based index of the
/// first bad event (for NDJSON: of the first bad line; blank lines count).
pub fn parse_body(
    bytes: &[u8],
    format: BodyFormat,
    max_batch: usize,
    rules: &Rules,
) -> Result<Vec<NewEvent>, ApiError> {
    let too_many = |n: usize| {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("{n} events in one request; ingest.max_batch is {max_batch}"))
    };
    let empty = || ApiError::new(ErrorCode::EmptyBatch, "the request holds no events");
    match format {
        BodyFormat::Json => {
            let value: Value = serde_json::from_slice(bytes)
                .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("body is not valid JSON: {e}")))?;
            match value {
                Value::Array(items) => {
                    if items.is_empty() {
                        return Err(empty());
                    }
                    if items.len() > max_batch {
                        return Err(too_many(items.len()));
                    }
                    items.into_iter().enumerate().map(|(i, v)| NewEvent::from_value(v, i, rules)).collect()
                }
                Value::Object(_) => Ok(vec![NewEvent::from_value(value, 0, rules)?]),
                other => Err(ApiError::new(
                    ErrorCode::InvalidEvent,
                    format!("body must be an event object or an array of events, got {}", short(&other)),
                )),
            }
        }
        BodyFormat::Ndjson => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("body is not UTF-8: {e}")))?;
            let mut events = Vec::new();
            for (i, line) in text.split('\n').enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if events.len() == max_batch {
                    let total = events.len() + text.split('\n').skip(i).filter(|l| !l.trim().is_empty()).count();
                    return Err(too_many(total));
                }
                let v: Value = serde_json::from_str(line).map_err(|e| {
                    ApiError::new(ErrorCode::InvalidJson, format!("line {i}: not valid JSON: {e}")).at(i)
                })?;
                events.push(NewEvent::from_value(v, i, rules)?);
            }
            if events.is_empty() {
                return Err(empty());
            }
            Ok(events)
        }
    }
}

fn short(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        _ => "something else",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, f: BodyFormat) -> Result<Vec<NewEvent>, ApiError> {
        parse_body(body.as_bytes(), f, 3, &Rules::default())
    }

    #[test]
    fn json_forms() {
        assert_eq!(parse(r#"{"type":"a"}"#, BodyFormat::Json).unwrap().len(), 1);
        assert_eq!(parse(r#"[{"type":"a"},{"type":"b"}]"#, BodyFormat::Json).unwrap().len(), 2);
        assert_eq!(parse("[]", BodyFormat::Json).unwrap_err().code, ErrorCode::EmptyBatch);
        let e = parse(r#"[{"type":"a"},{"type":"B"}]"#, BodyFormat::Json).unwrap_err();
        assert_eq!((e.code, e.index), (ErrorCode::InvalidEvent, Some(1)));
        let e = parse(r#"{"type":"a"} {"type":"b"}"#, BodyFormat::Json).unwrap_err();
        assert_eq!((e.code, e.index), (ErrorCode::InvalidJson, None));
        let e = parse(r#"{"type":"B"}"#, BodyFormat::Json).unwrap_err();
        assert_eq!(e.index, Some(0));
        assert_eq!(
            parse(r#"[{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"}]"#, BodyFormat::Json).unwrap_err().code,
            ErrorCode::PayloadTooLarge
        );
    }

    #[test]
    fn ndjson_indexes_lines() {
        assert_eq!(parse("{\"type\":\"a\"}\n\n{\"type\":\"b\"}\n", BodyFormat::Ndjson).unwrap().len(), 2);
        let e = parse("{\"type\":\"a\"}\n{\"type\": broken\n", BodyFormat::Ndjson).unwrap_err();
        assert_eq!((e.code, e.index), (ErrorCode::InvalidJson, Some(1)));
        assert_eq!(parse("\n\n", BodyFormat::Ndjson).unwrap_err().code, ErrorCode::EmptyBatch);
        let four = "{\"type\":\"a\"}\n".repeat(4);
        assert_eq!(parse(&four, BodyFormat::Ndjson).unwrap_err().code, ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn content_types() {
        let mut h = http::HeaderMap::new();
        assert_eq!(body_format(&h).unwrap(), BodyFormat::Json);
        h.insert(http::header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        assert_eq!(body_format(&h).unwrap(), BodyFormat::Json);
        h.insert(http::header::CONTENT_TYPE, "Application/X-NDJSON".parse().unwrap());
        assert_eq!(body_format(&h).unwrap(), BodyFormat::Ndjson);
        h.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(body_format(&h).unwrap_err().code, ErrorCode::UnsupportedMediaType);
    }
}
