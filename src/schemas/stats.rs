//! Stats and activity: the stats object, the activity page and its query.

use super::events::Event;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};

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
