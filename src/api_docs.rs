//! The OpenAPI 3.1 document of the HTTP API, generated from the code.
//!
//! Each operation is declared with `#[utoipa::path]` on (or next to) its
//! handler in `src/http/*.rs`; this module gathers them and the schema
//! types of [`crate::schemas`] into [`ApiDoc`]. Unit tests below compare the
//! documented shapes with what the real code produces, so the two cannot
//! drift apart silently.
//!
//! The document is served at `GET /api-docs/openapi.json` and rendered by
//! Swagger UI at `GET /docs` (see [`crate::http::docs`]).

use crate::error::ErrorCode;
use crate::schemas::*;
use bytes::Bytes;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The whole API: every HTTP path and every schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sidewire",
        version = env!("CARGO_PKG_VERSION"),
        description = API_DESCRIPTION,
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    paths(
        crate::http::ingest::route,
        crate::http::stats::route,
        crate::http::activity::route,
        dashboard_ws,
        dashboard_ws_alias,
        crate::http::health::healthz,
        crate::http::health::readyz,
        crate::http::health::metrics,
        crate::http::ui::index,
        crate::http::ui::app_js,
        crate::http::ui::style_css,
        crate::http::docs::openapi_json,
        crate::http::docs::docs_redirect,
        crate::http::docs::docs_index,
        crate::http::docs::docs_asset,
    ),
    components(schemas(
        IngestEvent,
        IngestBody,
        IngestBatch,
        IngestResult,
        Event,
        StatsSnapshot,
        ActivityPage,
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        Health,
        Ready,
        ConnectionAck,
        StatsUpdate,
        Pong,
        ResumeComplete,
        ServerMessage,
        Subscribe,
        Ping,
        Resume,
        ClientMessage,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "ingest", description = "The backend's hook: events in."),
        (name = "dashboard", description = "Live stats and activity for dashboards: REST and WebSocket."),
        (name = "operations", description = "Health, readiness and Prometheus metrics."),
        (name = "ui", description = "The built-in dashboard page and its assets."),
        (name = "docs", description = "This document and the interactive docs page."),
    )
)]
pub struct ApiDoc;

/// The document as served: serialized once, shared after.
pub fn openapi_bytes() -> Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| Bytes::from(serde_json::to_vec(&ApiDoc::openapi()).expect("the OpenAPI document serializes")))
        .clone()
}

const API_DESCRIPTION: &str = "sidewire is an observability sidecar. A backend posts its activity \
events to the ingest hook; sidewire stores each one through a pluggable persist callback, keeps stats, \
and serves them live to dashboards over REST and a WebSocket, with Prometheus metrics about itself.

**Auth.** When `auth.ingest_tokens` is configured, `POST /api/v1/ingest` needs \
`Authorization: Bearer <token>`. When `auth.dashboard_tokens` is configured, the stats, activity and \
WebSocket endpoints need a dashboard token, as `Authorization: Bearer <token>` or `?token=`. With no \
tokens configured the API is open (bind it to loopback).

**Errors.** Every error, everywhere, is the `ErrorBody` object \
`{\"error\": {\"code\", \"message\", \"index\"?}}`; `index` names the event (or NDJSON line) to blame. \
Unknown paths answer 404 `not_found`; a known path with the wrong method answers 405 with an `Allow` header.

**Timestamps** are RFC 3339; the server normalizes every timestamp it stores or sends to UTC with \
millisecond precision and a `Z` (`2025-12-31T20:00:00.000Z`).

**WebSocket.** Live updates come over `GET /api/v1/ws/dashboard` (alias `/ws/dashboard`); the \
messages are the `ServerMessage` and `ClientMessage` schemas.";

/// Adds the bearer-token security schemes the operations refer to.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description.to_string())).build(),
            )
        };
        components.add_security_scheme(
            "ingest_token",
            bearer("One of `auth.ingest_tokens`. Required only when that list is not empty."),
        );
        components.add_security_scheme(
            "dashboard_token",
            bearer(
                "One of `auth.dashboard_tokens` (also accepted as the `token` query parameter). \
                 Required only when that list is not empty.",
            ),
        );
    }
}

// ---------------------------------------------------------------------------
// The dashboard WebSocket (upgraded by `crate::ws` before warp routing; these
// functions only carry its documentation)
// ---------------------------------------------------------------------------

/// The live dashboard WebSocket
///
/// A WebSocket (RFC 6455, version 13): `GET` with `Upgrade: websocket`,
/// `Connection: Upgrade`, `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`.
///
/// **Before the upgrade**, in this order (each refusal is an `ErrorBody`, no upgrade):
/// 1. auth: with `auth.dashboard_tokens` set, `?token=` or `Authorization: Bearer` must carry one (401 `unauthorized`);
/// 2. origin: with `server.allowed_origins` set, an `Origin` not in it gets 403 `forbidden_origin`;
/// 3. per IP: over `ws.max_connections_per_ip` (10) open, or over `ws.connect_rate_per_ip_per_min` (60)
///    opened in a minute, 429 `too_many_connections` (IPv6 clients count per /64);
/// 4. global: with `ws.max_connections` (10,000) open, 503 `server_at_capacity`.
///
/// **Server to client** (`ServerMessage`), every message `{"type", "data", "timestamp"}`:
/// `connection_ack` first; `stats_update` right after it, then every `stats.interval_secs` and after
/// gauge changes; each accepted event as it is accepted, in `seq` order (the `Event` schema); `pong`
/// for a client `ping`; `resume_complete` after a replay; `error` events for system errors.
///
/// **Client to server** (`ClientMessage`, all optional): `subscribe` (filter event types), `ping`,
/// and `resume` as the first message (same as `?afterSeq=`). Invalid messages are logged and counted;
/// the connection stays open. A frame over 64 KiB closes it with 1009.
///
/// **Closing:** a client whose outgoing queue (`ws.send_queue_len`) is full is closed with 1008
/// `slow consumer`; the server pings every `ws.ping_interval_secs` and closes a connection that does not
/// answer within `ws.pong_timeout_secs`; on shutdown every client gets 1001.
#[utoipa::path(
    get,
    path = "/api/v1/ws/dashboard",
    operation_id = "dashboardWebSocket",
    tag = "dashboard",
    params(WsQuery),
    responses(
        (status = 101, description = "Switching Protocols: the connection is now a WebSocket carrying `ServerMessage`s (and accepting `ClientMessage`s).",
            headers(
                ("Upgrade" = String, description = "`websocket`"),
                ("Connection" = String, description = "`upgrade`"),
                ("Sec-WebSocket-Accept" = String, description = "Derived from the request's `Sec-WebSocket-Key`")
            )),
        (status = 400, description = "`afterSeq` is not a non-negative integer (`invalid_query`).", body = ErrorBody,
            example = json!({"error": {"code": "invalid_query", "message": "`afterSeq` must be a non-negative integer, got \"x\""}})),
        (status = 401, description = "A dashboard token is required and was missing or wrong.", body = ErrorBody,
            example = json!({"error": {"code": "unauthorized", "message": "a dashboard token is required (?token= or Authorization: Bearer)"}})),
        (status = 403, description = "The `Origin` header is not in `server.allowed_origins`.", body = ErrorBody,
            example = json!({"error": {"code": "forbidden_origin", "message": "origin `https://evil.example` is not in server.allowed_origins"}})),
        (status = 426, description = "Not a WebSocket upgrade request (`Upgrade: websocket` is sent back).", body = ErrorBody,
            example = json!({"error": {"code": "invalid_query", "message": "this endpoint speaks WebSocket only (GET with Upgrade: websocket, version 13)"}})),
        (status = 429, description = "Too many open connections from this address, or too many opened in the last minute.", body = ErrorBody,
            example = json!({"error": {"code": "too_many_connections", "message": "10 connections are open from your address (ws.max_connections_per_ip)"}})),
        (status = 503, description = "The server holds `ws.max_connections` connections.", body = ErrorBody,
            example = json!({"error": {"code": "server_at_capacity", "message": "the server holds ws.max_connections dashboard connections"}})),
    ),
    security((), ("dashboard_token" = []))
)]
#[allow(dead_code)]
fn dashboard_ws() {}

/// The live dashboard WebSocket (alias)
///
/// The same WebSocket as `GET /api/v1/ws/dashboard`: same checks, same messages.
#[utoipa::path(
    get,
    path = "/ws/dashboard",
    operation_id = "dashboardWebSocketAlias",
    tag = "dashboard",
    params(WsQuery),
    responses(
        (status = 101, description = "Switching Protocols: the connection is now a WebSocket carrying `ServerMessage`s."),
        (status = 400, description = "`afterSeq` is not a non-negative integer (`invalid_query`).", body = ErrorBody),
        (status = 401, description = "A dashboard token is required and was missing or wrong.", body = ErrorBody),
        (status = 403, description = "The `Origin` header is not in `server.allowed_origins`.", body = ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade request.", body = ErrorBody),
        (status = 429, description = "Too many connections from this address.", body = ErrorBody),
        (status = 503, description = "The server is at `ws.max_connections`.", body = ErrorBody),
    ),
    security((), ("dashboard_token" = []))
)]
#[allow(dead_code)]
fn dashboard_ws_alias() {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    fn props(schema: &Value) -> Vec<String> {
        let mut v: Vec<String> = schema["properties"].as_object().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    fn required(schema: &Value) -> Vec<String> {
        let mut v: Vec<String> = schema["required"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn document_is_cached_json() {
        let a = openapi_bytes();
        let b = openapi_bytes();
        assert_eq!(a.as_ptr(), b.as_ptr(), "serialized once");
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
    }

    #[test]
    fn is_openapi_31_with_the_crate_version() {
        let d = doc();
        assert!(d["openapi"].as_str().unwrap().starts_with("3.1"), "{}", d["openapi"]);
        assert_eq!(d["info"]["version"], crate::VERSION);
        assert_eq!(d["info"]["title"], "sidewire");
    }

    #[test]
    fn ws_paths_match_the_ws_module() {
        let d = doc();
        for p in crate::ws::PATHS {
            assert!(d["paths"][p]["get"].is_object(), "{p} is not documented");
        }
    }

    #[test]
    fn ingest_event_example_is_valid_and_all_fields_are_documented() {
        let d = doc();
        let s = schema(&d, "IngestEvent");
        let example = s["examples"][0].clone();
        let e = crate::event::NewEvent::from_value(example.clone(), 0, &Default::default()).expect("example is valid");
        assert_eq!(e.kind, "ingestion_complete");
        assert_eq!(keys(&example), props(s), "example and schema disagree");
        assert_eq!(required(s), vec!["type"]);
        assert_eq!(s["additionalProperties"], false);
    }

    #[test]
    fn event_schema_matches_the_wire_form() {
        let d = doc();
        let s = schema(&d, "Event");
        let t = crate::event::now_ms();
        let full = crate::event::Event::new(7, "a", t, Some("i"), Some("s"), "{}");
        let full: Value = serde_json::from_slice(&full.json).unwrap();
        assert_eq!(keys(&full), props(s));
        let bare = crate::event::Event::new(7, "a", t, None, None, "{}");
        let bare: Value = serde_json::from_slice(&bare.json).unwrap();
        assert_eq!(keys(&bare), required(s));
        // and the example parses as the schema's type
        let _: Event = serde_json::from_value(s["examples"][0].clone()).unwrap();
    }

    #[test]
    fn ingest_result_matches_the_pipeline_outcome() {
        let d = doc();
        let outcome = crate::pipeline::IngestOutcome { accepted: 1, duplicates: 0, seqs: vec![1] };
        let v = serde_json::to_value(&outcome).unwrap();
        let s = schema(&d, "IngestResult");
        assert_eq!(keys(&v), props(s));
        assert_eq!(keys(&v), required(s));
    }

    #[test]
    fn stats_schema_matches_a_real_snapshot() {
        let d = doc();
        let s = schema(&d, "StatsSnapshot");
        let stats = crate::stats::Stats::new(Default::default());
        let counters = crate::config::Config::default().stats.counter_rules();
        let snap = Value::Object(stats.snapshot(&counters));
        // every built-in the server sends is documented and required; the
        // default counters are documented (optional)
        assert_eq!(keys(&snap), props(s), "snapshot keys vs documented properties");
        let mut builtins: Vec<String> =
            keys(&snap).into_iter().filter(|k| !counters.iter().any(|c| &c.name == k)).collect();
        builtins.sort();
        assert_eq!(builtins, required(s));
        assert_eq!(s["additionalProperties"]["type"], "number");
        let _: StatsSnapshot = serde_json::from_value(snap).unwrap();
    }

    #[test]
    fn error_schema_matches_api_error() {
        let d = doc();
        let e = crate::error::ApiError::new(ErrorCode::InvalidEvent, "bad").at(2);
        let parsed: ErrorBody = serde_json::from_value(e.body()).unwrap();
        assert_eq!(parsed.error.index, Some(2));
        assert_eq!(keys(&e.body()["error"]), props(schema(&d, "ErrorDetail")));
        let codes = schema(&d, "ErrorCode")["enum"].as_array().unwrap().len();
        assert_eq!(codes, 15, "the contract lists 15 codes");
    }

    #[test]
    fn an_empty_batch_is_not_a_valid_body() {
        // `[]` is a 400 `empty_batch`: the document must not call it valid
        // (schemathesis sends every body the document allows and expects a 2xx).
        let d = doc();
        let batch = schema(&d, "IngestBatch");
        assert_eq!(batch["type"], "array");
        assert_eq!(batch["minItems"], 1);
        assert_eq!(batch["items"]["$ref"], "#/components/schemas/IngestEvent");
        let one_of = schema(&d, "IngestBody")["oneOf"].as_array().unwrap();
        let refs: Vec<&str> = one_of.iter().map(|s| s["$ref"].as_str().unwrap()).collect();
        assert_eq!(refs, ["#/components/schemas/IngestEvent", "#/components/schemas/IngestBatch"]);
        let content = &d["paths"]["/api/v1/ingest"]["post"]["requestBody"]["content"];
        assert_eq!(content["application/json"]["schema"]["$ref"], "#/components/schemas/IngestBody");
        assert_eq!(content["application/x-ndjson"]["schema"]["$ref"], "#/components/schemas/IngestBatch");
        // the JSON forms of IngestBody still read
        let _: IngestBody = serde_json::from_value(json!([{"type": "a"}])).unwrap();
        let _: IngestBody = serde_json::from_value(json!({"type": "a"})).unwrap();
    }

    #[test]
    fn activity_type_parameter_has_the_event_type_pattern() {
        let d = doc();
        let params = d["paths"]["/api/v1/activity/recent"]["get"]["parameters"].as_array().unwrap();
        let ty = params.iter().find(|p| p["name"] == "type").unwrap();
        assert_eq!((&ty["style"], &ty["explode"]), (&json!("form"), &json!(true)));
        assert_eq!(ty["schema"]["type"], "array");
        assert_eq!(ty["schema"]["items"]["pattern"], EVENT_TYPE_PATTERN);
        assert_eq!(schema(&d, "IngestEvent")["properties"]["type"]["pattern"], EVENT_TYPE_PATTERN);
        for (t, ok) in
            [("a", true), ("ingestion_complete", true), ("a.b:c-d", true), ("", false), ("A", false), ("1a", false)]
        {
            assert_eq!(crate::event::is_event_type(t), ok, "{t:?}");
            assert!(crate::http::activity::parse(&format!("type={t}")).is_ok() == ok, "{t:?}");
        }
    }

    #[test]
    fn seq_parameters_span_the_range_the_server_takes() {
        let d = doc();
        let param = |path: &str, name: &str| {
            let ps = d["paths"][path]["get"]["parameters"].as_array().unwrap();
            ps.iter().find(|p| p["name"] == name).unwrap()["schema"].clone()
        };
        for (path, name) in [
            ("/api/v1/activity/recent", "before"),
            ("/api/v1/activity/recent", "after"),
            ("/api/v1/ws/dashboard", "afterSeq"),
            ("/ws/dashboard", "afterSeq"),
        ] {
            let s = param(path, name);
            assert_eq!((&s["type"], &s["minimum"], &s["maximum"]), (&json!("integer"), &json!(0), &json!(u64::MAX)));
            assert!(s.get("format").is_none(), "{path} {name}: int64 would cap it at 2^63 - 1");
        }
        for (name, v, ok) in [("before", "18446744073709551615", true), ("after", "18446744073709551616", false)] {
            assert_eq!(crate::http::activity::parse(&format!("{name}={v}")).is_ok(), ok, "{name}={v}");
        }
    }

    #[test]
    fn activity_query_limits_match_the_handler() {
        let d = doc();
        let params = d["paths"]["/api/v1/activity/recent"]["get"]["parameters"].as_array().unwrap();
        let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["maximum"], json!(crate::http::activity::MAX_LIMIT));
        assert_eq!(limit["schema"]["default"], json!(crate::http::activity::DEFAULT_LIMIT));
        let names: Vec<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["limit", "type", "before", "after", "token"]);
        for n in names {
            let q = format!("{n}=1");
            let r = crate::http::activity::parse(&q);
            assert!(!matches!(&r, Err(e) if e.message.contains("unknown parameter")), "{n} is documented but unknown");
        }
    }
}
