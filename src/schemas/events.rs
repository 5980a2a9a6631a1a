//! Events: the ingest body and the accepted event.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};
use utoipa::ToSchema;

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
