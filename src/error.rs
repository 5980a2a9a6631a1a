//! The API's error type: one enum of everything a client can be told, and
//! the contract's error body `{"error": {"code", "message", "index"?}}`.
//!
//! Pure data (code, message, index, retry-after): no HTTP here. The web layer
//! turns it into a response (status, `Retry-After`) in [`crate::http::reply`].

use serde::Serialize;
use std::time::Duration;

/// A machine-readable error code, exactly the contract's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidEvent,
    EmptyBatch,
    ReservedType,
    ReservedStat,
    Unauthorized,
    ForbiddenOrigin,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidQuery,
    TooManyConnections,
    ServerAtCapacity,
    PersistUnavailable,
    RequestTimeout,
    NotFound,
}

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// 0-based index of the event (or NDJSON line) to blame, if one is.
    pub index: Option<usize>,
    /// Sent as `Retry-After` (whole seconds, rounded up) with 503s.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), index: None, retry_after: None }
    }

    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The contract's error body.
    pub fn body(&self) -> serde_json::Value {
        let mut err = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(i) = self.index {
            err["index"] = i.into();
        }
        serde_json::json!({ "error": err })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_index_only_when_set() {
        let e = ApiError::new(ErrorCode::InvalidEvent, "bad");
        assert_eq!(e.body(), serde_json::json!({"error": {"code": "invalid_event", "message": "bad"}}));
        let e = e.at(3);
        assert_eq!(e.body()["error"]["index"], 3);
    }
}
