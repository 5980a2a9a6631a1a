//! The client protocol: what a dashboard may send, and the envelope of
//! every message the server sends.

use crate::event::format_ts;
use crate::metrics::WsMessageType;
use serde_json::{json, Value};
use std::collections::HashSet;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A `{"type","data","timestamp"}` message.
pub fn message(kind: WsMessageType, data: Value) -> Utf8Bytes {
    json!({"type": kind.label(), "data": data, "timestamp": format_ts(&crate::event::now_ms())}).to_string().into()
}

/// What a client may send.
#[derive(Debug, PartialEq)]
pub(super) enum ClientMessage {
    /// `None`: every type.
    Subscribe(Option<HashSet<String>>),
    Ping,
    Resume(u64),
}

impl ClientMessage {
    pub(super) fn parse(text: &str) -> Result<ClientMessage, String> {
        let v: Value = serde_json::from_str(text).map_err(|_| "a message that is not JSON".to_string())?;
        let obj = v.as_object().ok_or("a message that is not a JSON object")?;
        match obj.get("type").and_then(Value::as_str) {
            Some("ping") => Ok(ClientMessage::Ping),
            Some("subscribe") => {
                let types = obj.get("types").and_then(Value::as_array).ok_or("subscribe without a `types` array")?;
                let mut set = HashSet::new();
                for t in types {
                    let t = t.as_str().ok_or("subscribe with a non-string type")?;
                    if t == "*" {
                        return Ok(ClientMessage::Subscribe(None));
                    }
                    set.insert(t.to_string());
                }
                Ok(ClientMessage::Subscribe(if set.is_empty() { None } else { Some(set) }))
            }
            Some("resume") => obj
                .get("afterSeq")
                .and_then(Value::as_u64)
                .map(ClientMessage::Resume)
                .ok_or_else(|| "resume without a non-negative integer `afterSeq`".to_string()),
            Some(other) => Err(format!("unknown message type `{other}`")),
            None => Err("a message without a `type`".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        assert_eq!(ClientMessage::parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
        assert_eq!(ClientMessage::parse(r#"{"type":"subscribe","types":["*"]}"#), Ok(ClientMessage::Subscribe(None)));
        assert_eq!(ClientMessage::parse(r#"{"type":"subscribe","types":[]}"#), Ok(ClientMessage::Subscribe(None)));
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","types":["a"]}"#),
            Ok(ClientMessage::Subscribe(Some(["a".to_string()].into())))
        );
        assert_eq!(ClientMessage::parse(r#"{"type":"resume","afterSeq":5}"#), Ok(ClientMessage::Resume(5)));
        assert!(ClientMessage::parse("nope").is_err());
        assert!(ClientMessage::parse("[1,2]").is_err());
        assert!(ClientMessage::parse(r#"{"type":"x"}"#).is_err());
    }
}
