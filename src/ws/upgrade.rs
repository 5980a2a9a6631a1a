//! The HTTP side of a dashboard WebSocket: the query (`token`,
//! `afterSeq`), admission, the handshake and the 101, then the connection's
//! task.

use super::admission::admit;
use super::connection::serve;
use super::socket::socket_config;
use super::State;
use crate::error::{ApiError, ErrorCode};
use crate::http::ErrorResponse;
use crate::internal_events::WsDisconnected;
use crate::metrics::DisconnectReason;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use warp::reply::Response;

/// Answers a request on a WebSocket path: refusal, or 101 and a connection task.
pub async fn upgrade(state: Arc<State>, peer: SocketAddr, mut req: http::Request<hyper::body::Incoming>) -> Response {
    let live = state.config.borrow().clone();
    let bad_query = |m: String| ApiError::new(ErrorCode::InvalidQuery, m).to_response();
    let mut token = None;
    let mut after_seq = None;
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "token" => token = Some(v.into_owned()),
            "afterSeq" => match v.parse::<u64>() {
                Ok(n) => after_seq = Some(n),
                Err(_) => return bad_query(format!("`afterSeq` must be a non-negative integer, got {v:?}")),
            },
            _ => {}
        }
    }
    let headers = req.headers();
    let key = headers.get(http::header::SEC_WEBSOCKET_KEY).cloned().filter(|_| {
        req.method() == http::Method::GET
            && headers
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
            && headers.get(http::header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13")
    });
    let guard = match admit(&state, &live, peer, &req, token.as_deref(), key.is_some()) {
        Ok(g) => g,
        Err(res) => return res,
    };
    let Some(key) = key else { unreachable!("admit refuses requests that are not upgrades") };
    let on_upgrade = hyper::upgrade::on(&mut req);
    // A GET upgrade has no body: nothing to drain.
    drop(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // The socket's own variable ends before the connection runs,
                // so the task does not keep room for it (see `serve`).
                let conn = {
                    let socket =
                        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(socket_config()))
                            .await;
                    serve(socket, after_seq, guard)
                };
                conn.await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                // Admitted and counted as opened: its end is counted too.
                WsDisconnected { reason: DisconnectReason::Error }.emit(&guard.state().metrics);
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut res = Response::default();
    *res.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept.parse().expect("base64 is a valid header"));
    res
}
