//! The API's error type: one enum of everything a client can be told, mapped
//! once to an HTTP status and the contract's error body
//! `{"error": {"code", "message", "index"?}}`.

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

impl ErrorCode {
    /// The HTTP status that goes with this code.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::InvalidJson
            | Self::InvalidEvent
            | Self::EmptyBatch
            | Self::ReservedType
            | Self::ReservedStat
            | Self::InvalidQuery => S::BAD_REQUEST,
            Self::Unauthorized => S::UNAUTHORIZED,
            Self::ForbiddenOrigin => S::FORBIDDEN,
            Self::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => S::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyConnections => S::TOO_MANY_REQUESTS,
            Self::ServerAtCapacity | Self::PersistUnavailable => S::SERVICE_UNAVAILABLE,
            Self::RequestTimeout => S::REQUEST_TIMEOUT,
            Self::NotFound => S::NOT_FOUND,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidEvent => "invalid_event",
            Self::EmptyBatch => "empty_batch",
            Self::ReservedType => "reserved_type",
            Self::ReservedStat => "reserved_stat",
            Self::Unauthorized => "unauthorized",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidQuery => "invalid_query",
            Self::TooManyConnections => "too_many_connections",
            Self::ServerAtCapacity => "server_at_capacity",
            Self::PersistUnavailable => "persist_unavailable",
            Self::RequestTimeout => "request_timeout",
            Self::NotFound => "not_found",
        }
    }
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
    /// Overrides the code's status (405 for a known path with the wrong method).
    pub status: Option<http::StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), index: None, retry_after: None, status: None }
    }

    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn with_status(mut self, status: http::StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn status(&self) -> http::StatusCode {
        self.status.unwrap_or_else(|| self.code.status())
    }

    /// The contract's error body.
    pub fn body(&self) -> serde_json::Value {
        let mut err = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(i) = self.index {
            err["index"] = i.into();
        }
        serde_json::json!({ "error": err })
    }

    /// The full HTTP response.
    pub fn to_response(&self) -> warp::reply::Response {
        let mut res = crate::http::json_response(self.status(), &self.body());
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            res.headers_mut().insert(http::header::RETRY_AFTER, secs.max(1).into());
        }
        res
    }
}

impl warp::reject::Reject for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_index_only_when_set() {
        let e = ApiError::new(ErrorCode::InvalidEvent, "bad");
        assert_eq!(e.body(), serde_json::json!({"error": {"code": "invalid_event", "message": "bad"}}));
        let e = e.at(3);
        assert_eq!(e.body()["error"]["index"], 3);
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn retry_after_rounds_up() {
        let e = ApiError::new(ErrorCode::PersistUnavailable, "down").retry_after(Duration::from_millis(1500));
        let r = e.to_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "2");
    }
}
