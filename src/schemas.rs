//! The schema types of the OpenAPI document: the documented shapes of
//! request and response bodies, query parameters and WebSocket messages.
//!
//! A leaf: it knows the error codes and nothing of the web layer. Most
//! handlers build their JSON by hand (the stats object is open-ended, events
//! are pre-encoded once), so these types are the documented shapes; the unit
//! tests in [`crate::api_docs`] compare them with what the real code
//! produces, so the two cannot drift apart silently.

use crate::error::ErrorCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, ToSchema};

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// One event as the backend sends it to the ingest hook. Any other top-level
/// field is refused (`invalid_event`), which catches typos such as `tpye`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "type": "ingestion_complete",
    "data": {"file": "report.pdf", "nodesCreated": 12},
    "timestamp": "2025-12-31T20:00:00Z",
    "id": "ingest-7f3a",
    "source": "backend-1"
})))]
pub struct IngestEvent {
    /// The event type. `connection_ack`, `pong` and `resume_complete` are
    /// server-only (`reserved_type`). Well-known: `ingestion_complete`,
    /// `query_complete`, `error`, and `stats_update` (a gauge report: each
    /// numeric top-level field of `data` sets the gauge of that name).
    #[serde(rename = "type")]
    #[schema(pattern = "^[a-z][a-z0-9_.:-]{0,63}$", min_length = 1, max_length = 64, examples("ingestion_complete"))]
    pub kind: String,
    /// Any JSON object (default `{}`): at most 64 KiB serialized and at most
    /// 32 levels of nested objects/arrays (`data` itself is level 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, nullable = false)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// RFC 3339, any offset; stored in UTC with millisecond precision, so
    /// in UTC it must fall within the years 0000 to 9999 (else
    /// `invalid_event`). The server's receive time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false, examples("2025-12-31T20:00:00Z"))]
    pub timestamp: Option<String>,
    /// The idempotency key: an event whose `id` was already accepted is not
    /// stored or broadcast again; it counts in `duplicates` and reports its
    /// first seq. 1–128 printable ASCII characters, no space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[!-~]{1,128}$", min_length = 1, max_length = 128, nullable = false)]
    pub id: Option<String>,
    /// Which backend instance sent it: 1–64 printable ASCII characters, no space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[!-~]{1,64}$", min_length = 1, max_length = 64, nullable = false)]
    pub source: Option<String>,
}

/// The `application/json` ingest body: one event, or an array of 1 to
/// `ingest.max_batch` (default 1000) events.
///
/// `ToSchema` is written by hand (here and for [`IngestBatch`]): utoipa's
/// derive cannot put `minItems` on a variant's array, and an empty batch is a
/// 400 `empty_batch`, so the document must not call `[]` valid.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IngestBody {
    One(IngestEvent),
    Many(IngestBatch),
}

impl utoipa::PartialSchema for IngestBody {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Ref::from_schema_name(IngestEvent::name()))
            .item(Ref::from_schema_name(IngestBatch::name()))
            .description(Some(
                "The `application/json` ingest body: one event, or an array of 1 to `ingest.max_batch` \
                 (default 1000) events.",
            ))
            .into()
    }
}

impl ToSchema for IngestBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        IngestBatch::schemas(schemas);
        schemas.push((IngestBatch::name().into(), <IngestBatch as utoipa::PartialSchema>::schema()));
    }
}

/// A batch of 1 to `ingest.max_batch` (default 1000) events: the array form
/// of the `application/json` body, and the events of an
/// `application/x-ndjson` body (there one JSON event per line).
#[derive(Debug, Serialize, Deserialize)]
pub struct IngestBatch(pub Vec<IngestEvent>);

impl utoipa::PartialSchema for IngestBatch {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(IngestEvent::name()))
            .min_items(Some(1))
            .description(Some(
                "1 to `ingest.max_batch` (default 1000) events; more is a 413 `payload_too_large`, none a 400 \
                 `empty_batch`. As `application/x-ndjson`, each event is one line of JSON (blank lines are \
                 skipped but count for `index`).",
            ))
            .into()
    }
}

impl ToSchema for IngestBatch {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((IngestEvent::name().into(), <IngestEvent as utoipa::PartialSchema>::schema()));
        IngestEvent::schemas(schemas);
    }
}

/// An accepted event as the server stores and sends it: the ingested event,
/// normalized, plus its `seq`. This is the form of `/api/v1/activity/recent`
/// items and of event messages on the WebSocket.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "type": "ingestion_complete",
    "data": {"file": "report.pdf", "nodesCreated": 12},
    "timestamp": "2025-12-31T20:00:00.000Z",
    "seq": 42,
    "id": "ingest-7f3a",
    "source": "backend-1"
})))]
pub struct Event {
    #[serde(rename = "type")]
    #[schema(pattern = "^[a-z][a-z0-9_.:-]{0,63}$", min_length = 1, max_length = 64)]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
    /// UTC, millisecond precision, `Z`.
    #[schema(format = DateTime, examples("2025-12-31T20:00:00.000Z"))]
    pub timestamp: String,
    /// Assigned by the server: strictly increasing in acceptance order,
    /// never reused, stable across restarts.
    #[schema(minimum = 1)]
    pub seq: u64,
    /// Present only when the event had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub id: Option<String>,
    /// Present only when the event had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub source: Option<String>,
}

/// The answer to an accepted ingest request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"accepted": 2, "duplicates": 1, "seqs": [41, 12, 42]})))]
pub struct IngestResult {
    /// Events newly accepted (stored and broadcast).
    pub accepted: u64,
    /// Events whose `id` had already been accepted: not stored again.
    pub duplicates: u64,
    /// One seq per event, in request order; a duplicate reports the seq it
    /// got the first time.
    pub seqs: Vec<u64>,
}

// ---------------------------------------------------------------------------
// Stats and activity
// ---------------------------------------------------------------------------

/// One flat object, camelCase keys: the built-ins (always present), the
/// counters from `stats.counters` (the default config defines
/// `filesProcessed`, `queriesCompleted` and `errors`), and the gauges the
/// backend pushed with `stats_update` events. Counters and gauges are the
/// additional (numeric) properties. This is also the `data` of every
/// `stats_update` WebSocket message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(examples(json!({
    "totalNodes": 45,
    "filesProcessed": 12,
    "queriesCompleted": 7,
    "errors": 1,
    "eventsTotal": 66,
    "eventsPerMinute": 4,
    "eventsByType": {"ingestion_complete": 12, "query_complete": 7, "error": 1},
    "activeConnections": 2,
    "messagesPerMinute": 38,
    "replicas": 1,
    "uptimeSeconds": 360,
    "lastEventAt": "2025-12-31T20:00:00.000Z",
    "lastSeq": 66,
    "generatedAt": "2025-12-31T20:00:05.000Z"
})))]
pub struct StatsSnapshot {
    /// Default counter: +1 per `ingestion_complete`, or `data.filesProcessed`
    /// when that is a number. Present when the config defines it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub files_processed: Option<f64>,
    /// Default counter: +1 per `query_complete`. Present when the config defines it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub queries_completed: Option<f64>,
    /// Default counter: +1 per `error`. Present when the config defines it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<f64>,
    /// Accepted events (duplicates not counted, gauge reports included).
    /// Survives a restart.
    pub events_total: u64,
    /// Events accepted in the last 60 s.
    pub events_per_minute: u64,
    /// Accepted events per type. Survives a restart.
    pub events_by_type: BTreeMap<String, u64>,
    /// Open dashboard WebSockets.
    pub active_connections: u64,
    /// WebSocket messages sent in the last 60 s.
    pub messages_per_minute: u64,
    /// Live replicas (1 without a cluster). With several replicas,
    /// `activeConnections` and `messagesPerMinute` are summed over them and
    /// `eventsPerMinute` counts every replica's events.
    pub replicas: u64,
    pub uptime_seconds: u64,
    /// Timestamp of the last accepted event; null before the first.
    #[schema(format = DateTime, required = true)]
    pub last_event_at: Option<String>,
    /// Seq of the last accepted event; 0 before the first.
    pub last_seq: u64,
    /// When this snapshot was taken.
    #[schema(format = DateTime)]
    pub generated_at: String,
    /// Counters (config rules) and gauges (`stats_update` reports), by name
    /// (`^[A-Za-z][A-Za-z0-9_]{0,63}$`).
    #[serde(flatten)]
    pub counters_and_gauges: BTreeMap<String, f64>,
}

/// One page of recent events, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(examples(json!({
    "items": [
        {"type": "query_complete", "data": {"ms": 120}, "timestamp": "2025-12-31T20:00:02.000Z", "seq": 18},
        {"type": "ingestion_complete", "data": {"file": "report.pdf"}, "timestamp": "2025-12-31T20:00:00.000Z", "seq": 17, "id": "ingest-7f3a"}
    ],
    "nextBefore": 17
})))]
pub struct ActivityPage {
    pub items: Vec<Event>,
    /// The seq to pass as `before` for the next page; null on the last page.
    #[schema(required = true, minimum = 1)]
    pub next_before: Option<u64>,
}

/// Query parameters of `GET /api/v1/activity/recent`. Anything else is a
/// 400 `invalid_query`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// Page size.
    #[param(minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<u32>,
    /// Only events of these types (repeatable: `?type=a&type=b` means either).
    /// Gauge reports (`stats_update`) are left out unless asked for here.
    #[serde(rename = "type")]
    #[param(rename = "type", style = Form, explode, value_type = Option<Vec<EventType>>, inline)]
    pub types: Option<Vec<String>>,
    /// Only events with seq < before (pass the previous page's `nextBefore`).
    #[param(value_type = Option<SeqParam>, inline)]
    pub before: Option<u64>,
    /// Only events with seq > after.
    #[param(value_type = Option<SeqParam>, inline)]
    pub after: Option<u64>,
    /// A dashboard token, as an alternative to `Authorization: Bearer`.
    pub token: Option<String>,
}

/// The schema of an event type in a query parameter (`type`): it must match
/// [`EVENT_TYPE_PATTERN`], anything else is a 400 `invalid_query`.
pub struct EventType;

impl utoipa::PartialSchema for EventType {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(EVENT_TYPE_PATTERN))
            .min_length(Some(1))
            .max_length(Some(64))
            .into()
    }
}

impl ToSchema for EventType {}

/// The schema of a seq query parameter (`before`, `after`, `afterSeq`): the
/// server takes any unsigned 64-bit integer (larger is a 400 `invalid_query`),
/// so the range is 0 to 2^64 - 1, not `int64`'s.
pub struct SeqParam;

impl utoipa::PartialSchema for SeqParam {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0u64)).maximum(Some(u64::MAX)).into()
    }
}

impl ToSchema for SeqParam {}

/// What an event type must match (see [`crate::event::is_event_type`]).
pub const EVENT_TYPE_PATTERN: &str = "^[a-z][a-z0-9_.:-]{0,63}$";

/// Query parameters of `GET /api/v1/stats`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// A dashboard token, as an alternative to `Authorization: Bearer`.
    pub token: Option<String>,
}

// ---------------------------------------------------------------------------
// Errors and health
// ---------------------------------------------------------------------------

/// The error body, everywhere in the API.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"error": {"code": "invalid_event", "message": "event 3: field `type`: must match ^[a-z][a-z0-9_.:-]{0,63}$", "index": 3}})))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For humans; wording may change.
    pub message: String,
    /// 0-based index of the event (or NDJSON line) to blame; only where an
    /// event is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub index: Option<u64>,
}

/// `GET /healthz`: the process runs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"status": "ok"})))]
pub struct Health {
    #[schema(inline)]
    pub status: OkStatus,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OkStatus {
    Ok,
}

/// `GET /readyz`: config loaded and the persist plugin answers its health check.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(
    json!({"status": "ok", "checks": {"config": "ok", "persist": {"plugin": "sqlite", "status": "ok"}}}),
    json!({"status": "unavailable", "checks": {"config": "ok", "persist": {"plugin": "postgres", "status": "unavailable", "error": "connection refused"}}})
))]
pub struct Ready {
    #[schema(inline)]
    pub status: ReadyStatus,
    #[schema(inline)]
    pub checks: ReadyChecks,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ok,
    Unavailable,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyChecks {
    #[schema(inline)]
    pub config: OkStatus,
    #[schema(inline)]
    pub persist: PersistCheck,
    /// Only with several replicas (`broadcast.backend` redis or postgres):
    /// `degraded` while the bus is down (events then reach dashboards from
    /// the store; the replica stays ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline, nullable = false)]
    pub broadcast: Option<BroadcastCheck>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastCheck {
    Ok,
    Degraded,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PersistCheck {
    /// The persist plugin's name (`sqlite`, `postgres`, `jsonl`, `webhook`, `memory`, or a custom one).
    pub plugin: String,
    #[schema(inline)]
    pub status: ReadyStatus,
    /// Why the health check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------
// WebSocket messages
// ---------------------------------------------------------------------------

// Type tags of the WebSocket messages (each schema allows exactly one value).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionAckType {
    ConnectionAck,
}
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatsUpdateType {
    StatsUpdate,
}
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PongType {
    Pong,
}
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResumeCompleteType {
    ResumeComplete,
}
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeType {
    Subscribe,
}
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PingType {
    Ping,
}
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResumeType {
    Resume,
}

/// Server to client, first message on every connection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "type": "connection_ack",
    "data": {"connectionId": "c-8f2d1a", "statsIntervalSecs": 5, "lastSeq": 66, "serverVersion": "0.1.0"},
    "timestamp": "2025-12-31T20:00:05.000Z"
})))]
pub struct ConnectionAck {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: ConnectionAckType,
    #[schema(inline)]
    pub data: ConnectionAckData,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionAckData {
    pub connection_id: String,
    /// `stats.interval_secs`: how often `stats_update` comes.
    pub stats_interval_secs: u64,
    /// Seq of the last accepted event when the connection opened.
    pub last_seq: u64,
    pub server_version: String,
}

/// Server to client: right after `connection_ack`, then every
/// `stats.interval_secs` and within 1 s of a gauge change. A connection
/// holds at most one unsent `stats_update`, the newest.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "type": "stats_update",
    "data": {"eventsTotal": 66, "eventsPerMinute": 4, "eventsByType": {"error": 1}, "activeConnections": 2,
             "messagesPerMinute": 38, "replicas": 1, "uptimeSeconds": 360, "lastEventAt": "2025-12-31T20:00:00.000Z",
             "lastSeq": 66, "generatedAt": "2025-12-31T20:00:05.000Z", "errors": 1},
    "timestamp": "2025-12-31T20:00:05.000Z"
})))]
pub struct StatsUpdate {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: StatsUpdateType,
    pub data: StatsSnapshot,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

/// Server to client: the answer to a client `ping`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"type": "pong", "data": {}, "timestamp": "2025-12-31T20:00:06.000Z"})))]
pub struct Pong {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: PongType,
    /// Always `{}`.
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

/// Server to client: the replay asked for by `afterSeq` is done; live events follow.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "type": "resume_complete",
    "data": {"replayed": 3, "lastSeq": 66, "truncated": false},
    "timestamp": "2025-12-31T20:00:05.000Z"
})))]
pub struct ResumeComplete {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: ResumeCompleteType,
    #[schema(inline)]
    pub data: ResumeCompleteData,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResumeCompleteData {
    /// Stored events sent (oldest first) before this message.
    pub replayed: u64,
    pub last_seq: u64,
    /// True when not every missed event was replayed: more than
    /// `ws.max_replay` were missed (the newest `ws.max_replay` were
    /// replayed), or retention removed some of them (what is kept was).
    pub truncated: bool,
}

/// Any message the server sends on the dashboard WebSocket: `connection_ack`
/// first, `stats_update`s, accepted events (as `Event`, in seq order; type
/// `error` for a system error worth showing), `pong`, `resume_complete`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ServerMessage {
    ConnectionAck(ConnectionAck),
    StatsUpdate(StatsUpdate),
    Event(Event),
    Pong(Pong),
    ResumeComplete(ResumeComplete),
}

/// Client to server: from now on only these event types (`stats_update`
/// always comes). `[]` or `["*"]` means all.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"type": "subscribe", "types": ["error", "query_complete"]})))]
pub struct Subscribe {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: SubscribeType,
    pub types: Vec<String>,
}

/// Client to server: answered by `pong`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"type": "ping"})))]
pub struct Ping {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: PingType,
}

/// Client to server, as the first message only (same as `?afterSeq=N`):
/// replay every stored event with seq > `afterSeq`, then `resume_complete`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(examples(json!({"type": "resume", "afterSeq": 60})))]
pub struct Resume {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: ResumeType,
    pub after_seq: u64,
}

/// Any message a client may send (all optional). Anything else (bad JSON,
/// unknown type, binary frames) is logged and counted; the connection stays
/// open. A frame over 64 KiB closes it with 1009.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ClientMessage {
    Subscribe(Subscribe),
    Ping(Ping),
    Resume(Resume),
}

/// Query parameters of the dashboard WebSocket.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct WsQuery {
    /// A dashboard token, as an alternative to `Authorization: Bearer`.
    pub token: Option<String>,
    /// Resume: replay every stored event with seq > afterSeq (at most
    /// `ws.max_replay`, oldest first), then `resume_complete`, then live
    /// events, with no gap and no duplicate.
    #[param(value_type = Option<SeqParam>, inline)]
    pub after_seq: Option<u64>,
}
