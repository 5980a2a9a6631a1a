//! Responses: JSON and byte bodies, and the one place a pure [`ApiError`]
//! becomes an HTTP response (its status and `Retry-After`).

use crate::error::{ApiError, ErrorCode};
use http::StatusCode;
use serde::Serialize;
use warp::reply::Response;

/// A JSON response.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("response bodies serialize");
    bytes_response(status, "application/json", bytes)
}

pub fn bytes_response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    res
}

/// The HTTP status that goes with an error code (contract section 1).
pub fn status(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::InvalidJson | C::InvalidEvent | C::EmptyBatch | C::ReservedType | C::ReservedStat | C::InvalidQuery => {
            StatusCode::BAD_REQUEST
        }
        C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::ForbiddenOrigin => StatusCode::FORBIDDEN,
        C::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        C::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
        C::ServerAtCapacity | C::PersistUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        C::NotFound => StatusCode::NOT_FOUND,
    }
}

/// An [`ApiError`] as the contract's error response.
pub trait ErrorResponse {
    /// The full HTTP response: the code's status, the error body, and
    /// `Retry-After` (whole seconds, rounded up) when the error has one.
    fn to_response(&self) -> Response;

    /// The same with another status than the code's (426 on a WebSocket
    /// path asked without an upgrade).
    fn to_response_as(&self, status: StatusCode) -> Response {
        let mut res = self.to_response();
        *res.status_mut() = status;
        res
    }
}

impl ErrorResponse for ApiError {
    fn to_response(&self) -> Response {
        let mut res = json_response(status(self.code), &self.body());
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            res.headers_mut().insert(http::header::RETRY_AFTER, secs.max(1).into());
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn status_and_body() {
        let r = ApiError::new(ErrorCode::InvalidEvent, "bad").at(3).to_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers().get(http::header::RETRY_AFTER).is_none());
    }

    #[test]
    fn retry_after_rounds_up() {
        let e = ApiError::new(ErrorCode::PersistUnavailable, "down").retry_after(Duration::from_millis(1500));
        let r = e.to_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "2");
    }
}
