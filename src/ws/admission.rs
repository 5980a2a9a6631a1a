//! Admission of a WebSocket request, in the contract's order: dashboard
//! token, origin, then (upgrades only) the per-IP connection and rate limits
//! and the global `ws.max_connections`. An admitted request gets its
//! [`ConnectionGuard`]; a refused one its error response, counted by reason.

use super::guard::ConnectionGuard;
use super::per_ip::ip_key;
use super::State;
use crate::config::LiveConfig;
use crate::error::{ApiError, ErrorCode};
use crate::http::ErrorResponse;
use crate::internal_events::WsRejected;
use crate::metrics::WsRejectReason;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::reply::Response;

fn client_ip(config: &crate::config::Config, peer: SocketAddr, headers: &http::HeaderMap) -> IpAddr {
    if config.server.trust_forwarded_for {
        if let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return ip;
        }
    }
    peer.ip()
}

fn reject(state: &State, reason: WsRejectReason, err: ApiError) -> Response {
    WsRejected { reason }.emit(&state.metrics);
    err.to_response()
}

/// Checks, in the contract's order, and reserves a connection.
// The refusal is returned straight to the client; boxing it buys nothing.
#[allow(clippy::result_large_err)]
pub(super) fn admit(
    state: &Arc<State>,
    live: &LiveConfig,
    peer: SocketAddr,
    req: &http::Request<hyper::body::Incoming>,
    token: Option<&str>,
    is_upgrade: bool,
) -> Result<ConnectionGuard, Response> {
    let cfg = &live.config;
    let headers = req.headers();
    if let Err(e) = crate::auth::dashboard(&cfg.auth.dashboard_tokens, headers, token) {
        return Err(reject(state, WsRejectReason::Unauthorized, e));
    }
    if !cfg.server.allowed_origins.is_empty() {
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !cfg.server.allowed_origins.iter().any(|o| o == origin) {
                return Err(reject(
                    state,
                    WsRejectReason::ForbiddenOrigin,
                    ApiError::new(
                        ErrorCode::ForbiddenOrigin,
                        format!("origin `{origin}` is not in server.allowed_origins"),
                    ),
                ));
            }
        }
    }
    // A plain GET (the dashboard page probes why an upgrade failed) gets its
    // auth/origin answer above, but takes no connection slot or rate budget.
    if !is_upgrade {
        let mut res = ApiError::new(
            ErrorCode::InvalidQuery,
            "this endpoint speaks WebSocket only (GET with Upgrade: websocket, version 13)",
        )
        .to_response_as(http::StatusCode::UPGRADE_REQUIRED);
        res.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
        return Err(res);
    }
    let ip = ip_key(client_ip(cfg, peer, headers));
    let ws = &state.sockets;
    let mut per_ip = ws.per_ip.lock();
    let now = Instant::now();
    per_ip.sweep_if_due(now);
    let map = &mut per_ip.map;
    let entry = map.entry(ip).or_default();
    while entry.connects.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
        entry.connects.pop_front();
    }
    if entry.open >= cfg.ws.max_connections_per_ip {
        let n = entry.open;
        drop(per_ip);
        return Err(reject(
            state,
            WsRejectReason::PerIpLimit,
            ApiError::new(
                ErrorCode::TooManyConnections,
                format!("{n} connections are open from your address (ws.max_connections_per_ip)"),
            ),
        ));
    }
    if entry.connects.len() >= cfg.ws.connect_rate_per_ip_per_min as usize {
        let wait = 60 - now.duration_since(entry.connects[0]).as_secs().min(59);
        drop(per_ip);
        return Err(reject(
            state,
            WsRejectReason::RateLimit,
            ApiError::new(
                ErrorCode::TooManyConnections,
                "too many connections opened from your address in the last minute (ws.connect_rate_per_ip_per_min)",
            )
            .retry_after(Duration::from_secs(wait)),
        ));
    }
    if ws.open_connections() >= cfg.ws.max_connections {
        drop(per_ip);
        return Err(reject(
            state,
            WsRejectReason::AtCapacity,
            ApiError::new(ErrorCode::ServerAtCapacity, "the server holds ws.max_connections dashboard connections")
                .retry_after(Duration::from_secs(5)),
        ));
    }
    Ok(ConnectionGuard::open(state, ip, entry, now))
}
