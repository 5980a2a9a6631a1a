//! The event: validation of what a backend sends (contract section 1) and the
//! stored/sent form with its server-assigned `seq`.
//!
//! Every event is encoded to its wire JSON exactly once, right after it gets
//! its seq; the store, the activity API and every WebSocket share those bytes.

use crate::error::{ApiError, ErrorCode};
use bytes::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Types only the server sends.
pub const RESERVED_TYPES: [&str; 3] = ["connection_ack", "pong", "resume_complete"];
/// The gauge-report type.
pub const STATS_UPDATE: &str = "stats_update";
/// Largest serialized `data`.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Deepest nesting of objects/arrays in `data` (`data` itself is level 1).
pub const MAX_DATA_DEPTH: usize = 32;

/// `^[a-z][a-z0-9_.:-]{0,63}$`
pub fn is_event_type(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b[1..].iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.:-".contains(&c))
}

/// `^[A-Za-z][A-Za-z0-9_]{0,63}$` (gauge and counter names).
pub fn is_stat_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphabetic()
        && b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

fn is_printable_ascii(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|c| (0x21..=0x7e).contains(&c))
}

/// Server timestamps: UTC, millisecond precision.
pub fn now_ms() -> DateTime<Utc> {
    truncate_ms(Utc::now())
}

pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis()).single().unwrap_or(t)
}

/// `2025-12-31T20:00:00.000Z`
pub fn format_ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What validation needs to know about the server's current config.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Names a gauge may not take: built-in stats and configured counters.
    pub reserved_stats: HashSet<String>,
}

/// A validated event that has no seq yet.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: String,
    /// Parsed `data`, for counter rules and gauges.
    pub data: Map<String, Value>,
    /// `data`, serialized compactly.
    pub data_json: String,
    pub timestamp: DateTime<Utc>,
    pub id: Option<String>,
    pub source: Option<String>,
}

impl NewEvent {
    pub fn is_gauge_report(&self) -> bool {
        self.kind == STATS_UPDATE
    }

    /// Roughly what the event occupies while it waits for the store.
    pub fn queued_size(&self) -> usize {
        self.data_json.len()
            + self.kind.len()
            + self.id.as_ref().map_or(0, String::len)
            + self.source.as_ref().map_or(0, String::len)
            + 128
    }

    /// The numeric top-level fields of a gauge report.
    pub fn gauges(&self) -> impl Iterator<Item = (&str, f64)> {
        self.data.iter().filter_map(|(k, v)| v.as_f64().map(|n| (k.as_str(), n)))
    }

    /// Validates one event. `index` is only used in messages and the error.
    pub fn from_value(value: Value, index: usize, rules: &Rules) -> Result<NewEvent, ApiError> {
        let bad = |code: ErrorCode, msg: String| ApiError::new(code, format!("event {index}: {msg}")).at(index);
        let Value::Object(mut obj) = value else {
            return Err(bad(ErrorCode::InvalidEvent, format!("must be a JSON object, got {}", kind_of(&value))));
        };
        if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "type" | "data" | "timestamp" | "id" | "source")) {
            return Err(bad(
                ErrorCode::InvalidEvent,
                format!("unknown field `{k}` (allowed: type, data, timestamp, id, source)"),
            ));
        }
        let kind = match obj.remove("type") {
            Some(Value::String(s)) => s,
            Some(v) => {
                return Err(bad(
                    ErrorCode::InvalidEvent,
                    format!("field `type`: must be a string, got {}", kind_of(&v)),
                ))
            }
            None => return Err(bad(ErrorCode::InvalidEvent, "field `type` is required".into())),
        };
        if !is_event_type(&kind) {
            return Err(bad(
                ErrorCode::InvalidEvent,
                format!("field `type`: {kind:?} must match ^[a-z][a-z0-9_.:-]{{0,63}}$"),
            ));
        }
        if RESERVED_TYPES.contains(&kind.as_str()) {
            return Err(bad(ErrorCode::ReservedType, format!("field `type`: `{kind}` is sent by the server only")));
        }
        let data = match obj.remove("data") {
            None => Map::new(),
            Some(Value::Object(m)) => m,
            Some(v) => {
                return Err(bad(
                    ErrorCode::InvalidEvent,
                    format!("field `data`: must be an object, got {}", kind_of(&v)),
                ))
            }
        };
        let depth = depth_of_map(&data);
        if depth > MAX_DATA_DEPTH {
            return Err(bad(
                ErrorCode::InvalidEvent,
                format!("field `data`: nested {depth} levels deep, at most {MAX_DATA_DEPTH}"),
            ));
        }
        let data_json = serde_json::to_string(&data).expect("a JSON map always serializes");
        if data_json.len() > MAX_DATA_BYTES {
            return Err(bad(
                ErrorCode::InvalidEvent,
                format!("field `data`: {} bytes serialized, at most {MAX_DATA_BYTES}", data_json.len()),
            ));
        }
        let timestamp = match obj.remove("timestamp") {
            None => now_ms(),
            Some(Value::String(s)) => match DateTime::parse_from_rfc3339(&s) {
                // In UTC it must still be writable as RFC 3339 (years 0000-9999):
                // `9999-12-31T23:00:00-05:00` is not, and would be stored and
                // sent as `+10000-01-01T04:00:00.000Z`.
                Ok(t) if !(0..=9999).contains(&t.with_timezone(&Utc).year()) => {
                    return Err(bad(
                        ErrorCode::InvalidEvent,
                        format!("field `timestamp`: {s:?} is outside the years 0000 to 9999 once in UTC"),
                    ))
                }
                Ok(t) => truncate_ms(t.with_timezone(&Utc)),
                Err(e) => {
                    return Err(bad(ErrorCode::InvalidEvent, format!("field `timestamp`: {s:?} is not RFC 3339 ({e})")))
                }
            },
            Some(v) => {
                return Err(bad(
                    ErrorCode::InvalidEvent,
                    format!("field `timestamp`: must be a string, got {}", kind_of(&v)),
                ))
            }
        };
        let id = optional_ascii(&mut obj, "id", 128).map_err(|m| bad(ErrorCode::InvalidEvent, m))?;
        let source = optional_ascii(&mut obj, "source", 64).map_err(|m| bad(ErrorCode::InvalidEvent, m))?;
        let event = NewEvent { kind, data, data_json, timestamp, id, source };
        if event.is_gauge_report() {
            for (name, _) in event.gauges() {
                if !is_stat_name(name) {
                    return Err(bad(
                        ErrorCode::InvalidEvent,
                        format!("gauge `{name}` in `data` must match ^[A-Za-z][A-Za-z0-9_]{{0,63}}$"),
                    ));
                }
                if rules.reserved_stats.contains(name) {
                    return Err(bad(
                        ErrorCode::ReservedStat,
                        format!("gauge `{name}` is the name of a built-in stat or counter"),
                    ));
                }
            }
        }
        Ok(event)
    }
}

fn optional_ascii(obj: &mut Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, String> {
    match obj.remove(field) {
        None => Ok(None),
        Some(Value::String(s)) if is_printable_ascii(&s, max) => Ok(Some(s)),
        Some(Value::String(_)) => {
            Err(format!("field `{field}`: must be 1-{max} printable ASCII characters (0x21-0x7E)"))
        }
        Some(v) => Err(format!("field `{field}`: must be a string, got {}", kind_of(&v))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn depth_of_map(m: &Map<String, Value>) -> usize {
    1 + m.values().map(depth_of).max().unwrap_or(0)
}

fn depth_of(v: &Value) -> usize {
    match v {
        Value::Object(m) => depth_of_map(m),
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// An accepted event: immutable, shared by the store, the activity API and
/// every WebSocket through its pre-encoded JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub kind: Box<str>,
    pub timestamp: DateTime<Utc>,
    pub id: Option<Box<str>>,
    pub source: Option<Box<str>>,
    pub data_json: Box<str>,
    /// The wire form: `{"type","data","timestamp","seq","id"?,"source"?}`.
    pub json: Bytes,
}

impl Event {
    pub fn new(
        seq: u64,
        kind: &str,
        timestamp: DateTime<Utc>,
        id: Option<&str>,
        source: Option<&str>,
        data_json: &str,
    ) -> Event {
        let json = encode(seq, kind, &timestamp, id, source, data_json);
        Event {
            seq,
            kind: kind.into(),
            timestamp,
            id: id.map(Into::into),
            source: source.map(Into::into),
            data_json: data_json.into(),
            json,
        }
    }

    pub fn from_new(seq: u64, e: &NewEvent) -> Event {
        Event::new(seq, &e.kind, e.timestamp, e.id.as_deref(), e.source.as_deref(), &e.data_json)
    }

    pub fn is_gauge_report(&self) -> bool {
        &*self.kind == STATS_UPDATE
    }

    /// Parses the wire form back (used by stores that keep it verbatim).
    pub fn from_json(line: &[u8]) -> Option<Event> {
        let e = Event::parse_wire(line)?;
        Some(Event::new(e.seq, &e.kind, e.timestamp, e.id.as_deref(), e.source.as_deref(), &e.data_json))
    }

    /// Like [`Event::from_json`], for a wire form another sidewire encoded
    /// (the cluster's bus): keeps `line` itself as the wire form instead of
    /// encoding it again.
    pub fn from_wire(line: Bytes) -> Option<Event> {
        let mut e = Event::parse_wire(&line)?;
        e.json = line;
        Some(e)
    }

    /// The fields of a wire form; `json` left empty.
    fn parse_wire(line: &[u8]) -> Option<Event> {
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            data: &'a serde_json::value::RawValue,
            timestamp: &'a str,
            seq: u64,
            id: Option<String>,
            source: Option<String>,
        }
        let w: Wire = serde_json::from_slice(line).ok()?;
        let ts = DateTime::parse_from_rfc3339(w.timestamp).ok()?.with_timezone(&Utc);
        Some(Event {
            seq: w.seq,
            kind: w.kind.into(),
            timestamp: ts,
            id: w.id.map(Into::into),
            source: w.source.map(Into::into),
            data_json: w.data.get().into(),
            json: Bytes::new(),
        })
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn encode(seq: u64, kind: &str, ts: &DateTime<Utc>, id: Option<&str>, source: Option<&str>, data_json: &str) -> Bytes {
    let mut out = Vec::with_capacity(data_json.len() + kind.len() + 80);
    out.extend_from_slice(br#"{"type":"#);
    push_str(&mut out, kind);
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data_json.as_bytes());
    out.extend_from_slice(br#","timestamp":""#);
    out.extend_from_slice(format_ts(ts).as_bytes());
    out.extend_from_slice(br#"","seq":"#);
    out.extend_from_slice(seq.to_string().as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        push_str(&mut out, id);
    }
    if let Some(source) = source {
        out.extend_from_slice(br#","source":"#);
        push_str(&mut out, source);
    }
    out.push(b'}');
    Bytes::from(out)
}

/// `[e1,e2,...]` from pre-encoded events.
pub fn json_array<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.json);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<NewEvent, ApiError> {
        let rules = Rules { reserved_stats: ["eventsTotal".to_string()].into() };
        NewEvent::from_value(v, 0, &rules)
    }

    #[test]
    fn type_pattern() {
        for ok in ["a", "ingestion_complete", "a.b:c-d_9", &"a".repeat(64)] {
            assert!(is_event_type(ok), "{ok}");
        }
        for bad in ["", "A", "1a", "a b", "é", &"a".repeat(65), "a/b"] {
            assert!(!is_event_type(bad), "{bad}");
        }
    }

    #[test]
    fn minimal_event_gets_defaults() {
        let e = check(json!({"type": "x"})).unwrap();
        assert_eq!(e.data_json, "{}");
        assert!(e.id.is_none() && e.source.is_none());
    }

    #[test]
    fn codes_for_bad_events() {
        let code = |v| check(v).unwrap_err().code;
        assert_eq!(code(json!({"type": "pong"})), ErrorCode::ReservedType);
        assert_eq!(code(json!({"type": "x", "tpye": 1})), ErrorCode::InvalidEvent);
        assert_eq!(code(json!({"type": "x", "data": []})), ErrorCode::InvalidEvent);
        assert_eq!(code(json!({"type": "x", "id": ""})), ErrorCode::InvalidEvent);
        assert_eq!(code(json!({"type": "x", "source": "bäckend"})), ErrorCode::InvalidEvent);
        assert_eq!(code(json!({"type": "x", "timestamp": "yesterday"})), ErrorCode::InvalidEvent);
        assert_eq!(code(json!({"type": "stats_update", "data": {"eventsTotal": 1}})), ErrorCode::ReservedStat);
        assert_eq!(code(json!([1])), ErrorCode::InvalidEvent);
    }

    #[test]
    fn depth_counts_data_as_level_one() {
        let mut v = json!(1);
        for _ in 0..32 {
            v = json!({ "a": v });
        }
        assert!(check(json!({"type": "x", "data": v.clone()})).is_ok());
        let v = json!({ "a": v });
        assert!(check(json!({"type": "x", "data": v})).is_err());
    }

    #[test]
    fn timestamp_normalized_to_utc_millis() {
        let e = check(json!({"type": "x", "timestamp": "2025-06-01T12:30:45.123456+02:00"})).unwrap();
        assert_eq!(format_ts(&e.timestamp), "2025-06-01T10:30:45.123Z");
    }

    #[test]
    fn timestamp_must_stay_within_rfc3339_years_in_utc() {
        // Found by schemathesis: these were accepted and then sent as
        // `+10000-01-01T...` and `-0001-12-31T...`, which are not RFC 3339
        // (and which the store could not read back).
        for ts in ["9999-12-31T23:00:00-05:00", "0000-01-01T00:00:00+00:01"] {
            let e = check(json!({"type": "x", "timestamp": ts})).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidEvent, "{ts}");
            assert!(e.message.contains("0000 to 9999"), "{}", e.message);
        }
        for (ts, utc) in [
            ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
            ("9999-12-31T00:00:00-05:00", "9999-12-31T05:00:00.000Z"),
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00.000Z"),
            ("0001-01-01T00:00:00+05:00", "0000-12-31T19:00:00.000Z"),
        ] {
            let e = check(json!({"type": "x", "timestamp": ts})).unwrap();
            assert_eq!(format_ts(&e.timestamp), utc, "{ts}");
            let wire = Event::from_new(1, &e);
            assert_eq!(Event::from_json(&wire.json).unwrap().timestamp, e.timestamp, "{ts} reads back");
        }
    }

    #[test]
    fn wire_form_round_trips() {
        let n = check(json!({"type": "x", "data": {"k": [1, "a\"b"]}, "id": "i\\\"d", "source": "s"})).unwrap();
        let e = Event::from_new(42, &n);
        let v: Value = serde_json::from_slice(&e.json).unwrap();
        assert_eq!(v["seq"], 42);
        assert_eq!(v["id"], "i\\\"d");
        assert_eq!(v["data"], json!({"k": [1, "a\"b"]}));
        assert_eq!(Event::from_json(&e.json).unwrap(), e);
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 6);
    }
}
