//! WebSocket messages: what the server sends a dashboard.

use super::events::Event;
use super::stats::{SeqParam, StatsSnapshot};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

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
