//! Decoding rewards events (SPEC §2) from Kafka record values.
//!
//! The JSON form is `{"event_type", "data", "timestamp", "client_id"?}`: `event_type` a non-empty
//! string, `data` an object, `timestamp` RFC 3339 (any offset; normalised to UTC with millisecond
//! precision and `Z`, sub-millisecond digits truncated; its UTC year within 0000–9999, which
//! is what a body's timestamp can say), `client_id` an optional string. Other top-level fields
//! are ignored so producers can add metadata. A repeated top-level key of the event is refused
//! (`duplicate_key`: which one was meant is ambiguous); repeated keys inside `data` are read as
//! `JSON.parse` reads them (the last value, at the first key's position). A value that fails any of this is
//! an [`InvalidEvent`] with a stable reason code (for metrics and the `webhooks.invalid` header)
//! and a message naming what is wrong; it never panics on any bytes.
//!
//! The Avro form (Confluent wire format, magic byte 0) is decoded by [`crate::avro::EventDecoder`],
//! which maps the datum to JSON and holds it to these same rules ([`RewardsEvent::from_json_map`]);
//! [`RewardsEvent::decode`] alone reads JSON and reports a framed value as `unsupported_avro`.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Event types of the public guide. Others are still delivered to `*` subscribers.
pub const KNOWN_EVENT_TYPES: [&str; 11] = [
    "rewards.points_awarded",
    "rewards.tier_promoted",
    "rewards.redeemed",
    "cashback.redeemed",
    "cashback.processed",
    "cashback.rejected",
    "cashback.redemption_completed",
    "cashback.redemption_cancelled",
    "rewards.rule_created",
    "rewards.catalog_created",
    "rewards.partner_created",
];

/// Longest event type accepted.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq)]
pub struct RewardsEvent {
    pub event_type: String,
    pub data: Map<String, Value>,
    /// UTC, millisecond precision, `Z`: `2025-01-15T10:30:00.000Z`.
    pub timestamp: String,
    pub client_id: Option<String>,
}

/// Why a record could not be decoded: a bounded `code` and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InvalidEvent {
    pub code: &'static str,
    pub message: String,
}

impl InvalidEvent {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        InvalidEvent {
            code,
            message: message.into(),
        }
    }

    /// A value larger than `delivery.max_event_bytes`.
    pub fn too_large(size: usize, max: usize) -> Self {
        InvalidEvent::new(
            "event_too_large",
            format!("record value is {size} bytes, more than delivery.max_event_bytes ({max})"),
        )
    }
}

#[derive(Deserialize)]
struct Wire {
    event_type: Option<Value>,
    data: Option<Value>,
    timestamp: Option<Value>,
    #[serde(default)]
    client_id: Option<Value>,
}

impl RewardsEvent {
    /// Decodes one record value.
    pub fn decode(value: Option<&[u8]>) -> Result<RewardsEvent, InvalidEvent> {
        let bytes = value.ok_or_else(|| InvalidEvent::new("empty_value", "record has no value"))?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => return Err(InvalidEvent::new("empty_value", "record value is empty")),
            Some(0) => {
                return Err(InvalidEvent::new(
                    "unsupported_avro",
                    "Confluent Avro wire format (magic byte 0) needs the schema registry decoder",
                ))
            }
            Some(b'{') => {}
            Some(_) => {
                return Err(InvalidEvent::new(
                    "not_json_object",
                    "record value is not a JSON object",
                ))
            }
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
            if e.to_string().starts_with("duplicate field") {
                InvalidEvent::new("duplicate_key", format!("a top-level key repeats: {e}"))
            } else {
                InvalidEvent::new("bad_json", format!("not valid JSON: {e}"))
            }
        })?;
        RewardsEvent::from_wire(wire)
    }

    /// An event from a JSON object already parsed (the Avro form, mapped to JSON): the same
    /// rules as [`RewardsEvent::decode`].
    pub fn from_json_map(mut map: Map<String, Value>) -> Result<RewardsEvent, InvalidEvent> {
        RewardsEvent::from_wire(Wire {
            event_type: map.remove("event_type"),
            data: map.remove("data"),
            timestamp: map.remove("timestamp"),
            client_id: map.remove("client_id"),
        })
    }

    fn from_wire(wire: Wire) -> Result<RewardsEvent, InvalidEvent> {
        let event_type = match wire.event_type {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(InvalidEvent::new(
                    "bad_event_type",
                    "event_type is not a string",
                ))
            }
            None => return Err(InvalidEvent::new("missing_field", "event_type is missing")),
        };
        if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_LEN {
            return Err(InvalidEvent::new(
                "bad_event_type",
                format!("event_type must be 1 to {MAX_EVENT_TYPE_LEN} bytes"),
            ));
        }
        if event_type.chars().any(char::is_control) {
            return Err(InvalidEvent::new(
                "bad_event_type",
                "event_type contains control characters",
            ));
        }
        let data = match wire.data {
            Some(Value::Object(m)) => m,
            Some(_) => return Err(InvalidEvent::new("bad_data", "data is not a JSON object")),
            None => return Err(InvalidEvent::new("missing_field", "data is missing")),
        };
        let timestamp = match wire.timestamp {
            Some(Value::String(s)) => normalise_timestamp(&s)?,
            Some(_) => {
                return Err(InvalidEvent::new(
                    "bad_timestamp",
                    "timestamp is not a string",
                ))
            }
            None => return Err(InvalidEvent::new("missing_field", "timestamp is missing")),
        };
        let client_id = match wire.client_id {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(_) => {
                return Err(InvalidEvent::new(
                    "bad_client_id",
                    "client_id must be a non-empty string or null",
                ))
            }
        };
        Ok(RewardsEvent {
            event_type,
            data,
            timestamp,
            client_id,
        })
    }

    /// The idempotency key the guide tells receivers to use: `event_type + data.user_id +
    /// timestamp` (the user id as JavaScript would print it; empty when absent).
    pub fn idempotency_key(&self) -> String {
        let user = match self.data.get("user_id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => {
                let mut out = Vec::new();
                crate::body::write_js_json(&mut out, other);
                String::from_utf8(out).expect("JSON is UTF-8")
            }
        };
        let mut key =
            String::with_capacity(self.event_type.len() + user.len() + self.timestamp.len());
        key.push_str(&self.event_type);
        key.push_str(&user);
        key.push_str(&self.timestamp);
        key
    }
}

/// RFC 3339 → UTC, millisecond precision, `Z`.
pub fn normalise_timestamp(s: &str) -> Result<String, InvalidEvent> {
    let t = DateTime::parse_from_rfc3339(s).map_err(|e| {
        InvalidEvent::new(
            "bad_timestamp",
            format!("timestamp {s:?} is not RFC 3339: {e}"),
        )
    })?;
    let utc = t.with_timezone(&Utc);
    if !(0..=9999).contains(&utc.year()) {
        return Err(InvalidEvent::new(
            "bad_timestamp",
            format!("timestamp {s:?} is outside the years 0000 to 9999 in UTC"),
        ));
    }
    Ok(utc_millis(&utc))
}

/// `t` as RFC 3339 UTC with milliseconds and a `Z` (`2025-01-15T10:30:00.000Z`), the form of
/// every timestamp in our bodies and records: the text of chrono's
/// `to_rfc3339_opts(SecondsFormat::Millis, true)`, written into one fixed-size buffer instead of
/// through its formatting machinery (this runs for every event and every delivery-log record).
/// Years outside 0000–9999 and leap seconds, which that buffer has no room for, go to chrono.
pub fn utc_millis(t: &DateTime<Utc>) -> String {
    let year = t.year();
    let millis = t.timestamp_subsec_millis();
    if !(0..=9999).contains(&year) || millis > 999 {
        return t.to_rfc3339_opts(SecondsFormat::Millis, true);
    }
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let fields = [
        (0, 4, year as u32),
        (5, 2, t.month()),
        (8, 2, t.day()),
        (11, 2, t.hour()),
        (14, 2, t.minute()),
        (17, 2, t.second()),
        (20, 3, millis),
    ];
    for (at, width, mut value) in fields {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    std::str::from_utf8(&text)
        .expect("digits and ASCII separators")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<RewardsEvent, InvalidEvent> {
        RewardsEvent::decode(Some(s.as_bytes()))
    }

    #[test]
    fn decodes_the_guide_example() {
        let e = decode(
            r#"{"event_type":"rewards.points_awarded","data":{"user_id":"usr_abc123","points":150},
                "timestamp":"2025-01-15T10:30:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(e.event_type, "rewards.points_awarded");
        assert_eq!(e.timestamp, "2025-01-15T10:30:00.000Z");
        assert_eq!(e.client_id, None);
        assert_eq!(
            e.idempotency_key(),
            "rewards.points_awardedusr_abc1232025-01-15T10:30:00.000Z"
        );
    }

    #[test]
    fn timestamps_are_normalised_to_utc_millis() {
        for (input, expected) in [
            ("2025-01-15T10:30:00Z", "2025-01-15T10:30:00.000Z"),
            ("2025-01-15T10:30:00.1Z", "2025-01-15T10:30:00.100Z"),
            ("2025-01-15T10:30:00.123456789Z", "2025-01-15T10:30:00.123Z"),
            ("2025-01-15T12:30:00.000+02:00", "2025-01-15T10:30:00.000Z"),
            ("2025-01-15t10:30:00.000z", "2025-01-15T10:30:00.000Z"),
            ("2025-01-15T00:30:00-01:00", "2025-01-15T01:30:00.000Z"),
        ] {
            assert_eq!(normalise_timestamp(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn utc_millis_writes_what_chrono_writes() {
        let chrono_text = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        // Every field's carries and widths: epoch, leap days, year ends, the range's edges, and
        // a spread of instants with every millisecond digit.
        let mut instants: Vec<i64> = vec![
            0,
            -1,
            951_782_400_000,     // 2000-02-29
            1_735_689_599_999,   // 2024-12-31T23:59:59.999
            -62_167_219_200_000, // 0000-01-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // 10000-01-01: chrono's form
            -62_167_219_200_001, // -0001-12-31: chrono's form
        ];
        instants.extend((0..20_000).map(|i: i64| i * 12_345_678_917 - 61_000_000_000_000));
        for ms in instants {
            let t = DateTime::from_timestamp_millis(ms).unwrap();
            assert_eq!(utc_millis(&t), chrono_text(&t), "{ms}");
        }
        // A leap second (chrono keeps it as a nanosecond count above 10^9).
        let leap = DateTime::parse_from_rfc3339("2016-12-31T23:59:60.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(utc_millis(&leap), chrono_text(&leap));
    }

    #[test]
    fn rejects_with_a_reason_code() {
        let ok_data = r#""data":{},"timestamp":"2025-01-15T10:30:00Z""#;
        #[rustfmt::skip]
        let cases: &[(Option<&[u8]>, &str)] = &[
            (None, "empty_value"),
            (Some(b""), "empty_value"),
            (Some(b"  \n"), "empty_value"),
            (Some(b"\x00\x00\x00\x00\x01\x02"), "unsupported_avro"),
            (Some(b"[1,2]"), "not_json_object"),
            (Some(b"\xff\xfe"), "not_json_object"),
            (Some(b"{\"event_type\":"), "bad_json"),
            (Some(b"{\"event_type\":\"a\",\"data\":{\"x\":\"\\ud800\"},\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "bad_json"),
            (Some(b"{\"event_type\":\"a\",\"data\":{\"x\":1e400},\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "bad_json"),
            (Some(b"{\"data\":{},\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "missing_field"),
            (Some(b"{\"event_type\":\"a\",\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "missing_field"),
            (Some(b"{\"event_type\":\"a\",\"data\":{}}"), "missing_field"),
            (Some(b"{\"event_type\":\"a\",\"data\":[],\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "bad_data"),
            (Some(b"{\"event_type\":\"a\",\"data\":{},\"timestamp\":\"yesterday\"}"), "bad_timestamp"),
            (Some(b"{\"event_type\":\"a\",\"data\":{},\"timestamp\":1736937000}"), "bad_timestamp"),
            (Some(b"{\"event_type\":\"a\",\"data\":{},\"timestamp\":\"2025-01-15 10:30:00\"}"), "bad_timestamp"),
            (Some(b"{\"event_type\":7,\"data\":{},\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "bad_event_type"),
            (Some(b"{\"event_type\":\"\",\"data\":{},\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "bad_event_type"),
            (Some(b"{\"event_type\":\"a\\nb\",\"data\":{},\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "bad_event_type"),
            (Some(b"{\"event_type\":\"a\",\"data\":{},\"timestamp\":\"2025-01-15T10:30:00Z\",\"client_id\":5}"), "bad_client_id"),
            (Some(b"{\"event_type\":\"a\",\"data\":{},\"timestamp\":\"0000-01-01T00:30:00+01:00\"}"), "bad_timestamp"),
            (Some(b"{\"event_type\":\"a\",\"data\":{},\"timestamp\":\"9999-12-31T23:59:59-01:00\"}"), "bad_timestamp"),
            (Some(b"{\"event_type\":\"a\",\"event_type\":\"b\",\"data\":{},\"timestamp\":\"2025-01-15T10:30:00Z\"}"), "duplicate_key"),
        ];
        for (input, code) in cases {
            let err = RewardsEvent::decode(*input).unwrap_err();
            assert_eq!(&err.code, code, "{input:?}: {err}");
            assert!(!err.message.is_empty());
        }
        // Unknown top-level fields are tolerated; null client_id is no scope.
        let e = decode(&format!(
            r#"{{"event_type":"x.y",{ok_data},"client_id":null,"v":2}}"#
        ))
        .unwrap();
        assert_eq!(e.client_id, None);
        // The edges of the year range, and repeated keys inside data as JSON.parse reads them.
        assert!(
            decode(r#"{"event_type":"a","data":{},"timestamp":"0000-01-01T00:00:00Z"}"#).is_ok()
        );
        assert!(
            decode(r#"{"event_type":"a","data":{},"timestamp":"9999-12-31T23:59:59.999Z"}"#)
                .is_ok()
        );
        let e = decode(
            r#"{"event_type":"a","data":{"x":1,"y":2,"x":3},"timestamp":"2025-01-15T10:30:00Z"}"#,
        )
        .unwrap();
        assert_eq!(serde_json::to_string(&e.data).unwrap(), r#"{"x":3,"y":2}"#);
    }
}
