//! Errors and health: the error body, `/healthz` and `/readyz`.

use crate::error::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
