//! Avro records in the Confluent wire format: magic byte `0`, a 4-byte big-endian schema id,
//! then the Avro binary datum written with that schema. This module owns recognising the
//! framing, the schema-registry lookup ([`registry`]), decoding a rewards event from it
//! ([`EventDecoder`], also the JSON form's entry point, since both mix on one topic), the
//! Avro → JSON mapping of webhook bodies ([`json`]), and writing and reading our own records
//! as registered Avro ([`records`]).
//!
//! Guarantees: bad Avro — an unknown schema id, a truncated or over-long datum, a schema that
//! is not the event's shape, a value with no JSON form — is an [`InvalidEvent`] with a stable
//! reason code, like bad JSON. A registry that cannot answer now (down, slow, 5xx) is never
//! bad input: it is [`DecodeError::Unavailable`], and callers wait and try again, holding the
//! record's offset. An Avro event decodes to the same [`RewardsEvent`] — so the same body
//! bytes — as its JSON twin, and decoding the same bytes again gives the same event (the body
//! of a task carried by reference is rebuilt that way).

pub mod encode;
pub mod json;
pub mod records;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use apache_avro::schema::{ResolvedSchema, Schema};
use serde_json::Value;

use crate::config::RegistryConfig;
use crate::events::{InvalidEvent, RewardsEvent};
use registry::{LookupError, RegisteredSchema, Registry};

/// The Confluent framing's magic byte.
pub const MAGIC: u8 = 0;
/// Magic byte and schema id.
pub const HEADER_LEN: usize = 5;

/// The schema of rewards events we register and produce with (`produce-sample --format avro`).
pub const REWARDS_EVENT_SCHEMA: &str = include_str!("../../schemas/rewards-event.avsc");

/// Largest allocation the Avro decoder makes for one length prefix. A datum claiming a longer
/// string is truncated input, refused without allocating for it.
pub const MAX_ALLOCATION_BYTES: usize = 64 * 1024 * 1024;

/// `value` in the Confluent framing with schema `id`.
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// Whether `value` is in the Confluent framing (its first byte is the magic byte).
pub fn is_framed(value: &[u8]) -> bool {
    value.first() == Some(&MAGIC)
}

/// The schema id and datum of a framed value.
pub fn unframe(value: &[u8]) -> Result<(u32, &[u8]), InvalidEvent> {
    match value {
        [MAGIC, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => Err(InvalidEvent::new(
            "avro_bad_frame",
            format!(
                "Confluent framing needs at least {HEADER_LEN} bytes (magic byte 0, a 4-byte schema id); the value has {}",
                value.len()
            ),
        )),
    }
}

/// Decodes one datum written with `schema` and maps it to JSON; the datum must be exactly one
/// value (trailing bytes are refused: a valid value followed by garbage is not what was
/// written).
pub fn datum_to_json(schema: &Schema, datum: &[u8]) -> Result<Value, InvalidEvent> {
    init_limits();
    let mut reader = EofGuard {
        rest: datum,
        hit_eof: false,
    };
    let decoded = apache_avro::from_avro_datum(schema, &mut reader, None);
    let rest = reader.rest;
    let value = match decoded {
        // apache-avro reads a boolean, string or union index cut off by the end of the input
        // as null (a compatibility shim): a datum that ran out is truncated, whatever it says.
        Ok(_) if reader.hit_eof => {
            return Err(InvalidEvent::new(
                "avro_truncated",
                format!(
                    "the Avro datum ends before its schema's last field ({} bytes)",
                    datum.len()
                ),
            ))
        }
        Ok(v) => v,
        Err(e) => {
            return Err(InvalidEvent::new(
                "avro_truncated",
                format!(
                    "the Avro datum does not decode with its schema (truncated or corrupt): {e}"
                ),
            ))
        }
    };
    if !rest.is_empty() {
        return Err(InvalidEvent::new(
            "avro_trailing_bytes",
            format!(
                "{} bytes follow the Avro datum ({} bytes decoded)",
                rest.len(),
                datum.len() - rest.len()
            ),
        ));
    }
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| {
        InvalidEvent::new(
            "avro_bad_schema",
            format!("the schema does not resolve: {e}"),
        )
    })?;
    json::to_json(&value, schema, resolved.get_names())
        .map_err(|e| InvalidEvent::new("avro_bad_value", e.0))
}

/// A reader over the datum that remembers whether the decoder ever asked past its end.
struct EofGuard<'a> {
    rest: &'a [u8],
    hit_eof: bool,
}

impl std::io::Read for EofGuard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.rest.is_empty() {
            self.hit_eof = true;
            return Ok(0);
        }
        self.rest.read(buf)
    }
}

fn init_limits() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    });
}

/// Checks that `schema` has the rewards event's shape: a record with `event_type` (string),
/// `data` (a record, a map, or a string of JSON object text, or a union of those),
/// `timestamp` (an RFC 3339 string or a `timestamp-millis`/`-micros` long) and optionally
/// `client_id` (a string, or null or string). Names the first field that is wrong.
pub fn check_event_shape(schema: &Schema) -> Result<(), String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    let names = resolved.get_names();
    let deref = |s: &'_ Schema| -> Schema {
        match s {
            Schema::Ref { name } => names
                .iter()
                .find(|(n, _)| n.fullname(None) == name.fullname(None))
                .map(|(_, s)| (*s).clone())
                .unwrap_or_else(|| s.clone()),
            other => other.clone(),
        }
    };
    let Schema::Record(record) = schema else {
        return Err("the schema is not a record".into());
    };
    let field = |name: &str| record.fields.iter().find(|f| f.name == name);
    let branches = |s: &Schema| -> Vec<Schema> {
        match deref(s) {
            Schema::Union(u) => u.variants().iter().map(deref).collect(),
            other => vec![other],
        }
    };
    match field("event_type").map(|f| deref(&f.schema)) {
        Some(Schema::String) => {}
        Some(_) => return Err("field event_type is not a string".into()),
        None => return Err("the record has no field event_type".into()),
    }
    match field("data") {
        None => return Err("the record has no field data".into()),
        Some(f) => {
            let ok = branches(&f.schema)
                .iter()
                .all(|b| matches!(b, Schema::Record(_) | Schema::Map(_) | Schema::String));
            if !ok {
                return Err(
                    "field data is not a record, a map or a string (or a union of those)".into(),
                );
            }
        }
    }
    match field("timestamp").map(|f| deref(&f.schema)) {
        Some(Schema::String | Schema::TimestampMillis | Schema::TimestampMicros) => {}
        Some(_) => {
            return Err(
                "field timestamp is not an RFC 3339 string or a timestamp-millis/-micros long"
                    .into(),
            )
        }
        None => return Err("the record has no field timestamp".into()),
    }
    if let Some(f) = field("client_id") {
        let ok = branches(&f.schema)
            .iter()
            .all(|b| matches!(b, Schema::Null | Schema::String));
        if !ok {
            return Err("field client_id is not a string or null".into());
        }
    }
    Ok(())
}

/// A rewards event from a datum written with `schema` (the shape already checked): mapped to
/// JSON, then held to exactly the rules of the JSON form.
pub fn event_from_datum(schema: &Schema, datum: &[u8]) -> Result<RewardsEvent, InvalidEvent> {
    let mut value = datum_to_json(schema, datum)?;
    // `data` as a string carries JSON object text (the generic branch).
    if let Some(data) = value.get_mut("data") {
        let parsed = match &*data {
            Value::String(text) => Some(serde_json::from_str::<Value>(text).map_err(|e| {
                InvalidEvent::new("bad_data", format!("data is a string but not JSON: {e}"))
            })?),
            _ => None,
        };
        if let Some(parsed) = parsed {
            *data = parsed;
        }
    }
    match value {
        Value::Object(map) => RewardsEvent::from_json_map(map),
        _ => Err(InvalidEvent::new(
            "avro_schema_mismatch",
            "the datum is not a record",
        )),
    }
}

/// Why a record could not be decoded now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Bad input: to the invalid topic.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// The schema registry cannot answer now: wait and try again.
    #[error("{0}")]
    Unavailable(String),
}

/// Decodes rewards events of either form (JSON, or Avro in the Confluent framing), looking
/// Avro schemas up in the registry.
#[derive(Clone)]
pub struct EventDecoder {
    registry: Option<Arc<Registry>>,
}

impl EventDecoder {
    pub fn new(config: &RegistryConfig) -> anyhow::Result<EventDecoder> {
        Ok(EventDecoder {
            registry: Registry::from_config(config)?,
        })
    }

    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// [`EventDecoder::decode`], waiting while the registry is unavailable (backoff 200 ms
    /// doubling to 5 s), counted in `webhooks_registry_unavailable_total` and shown in
    /// `webhooks_registry_waiting_records` (the registry client logs it, rate-limited). Only
    /// bad input comes back as an error; the record is never given up for an outage.
    pub async fn decode_waiting(
        &self,
        value: Option<&[u8]>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<RewardsEvent, InvalidEvent> {
        let mut backoff = Duration::from_millis(200);
        let mut waiting: Option<WaitingGuard<'_>> = None;
        loop {
            match self.decode(value).await {
                Ok(event) => return Ok(event),
                Err(DecodeError::Invalid(e)) => return Err(e),
                Err(DecodeError::Unavailable(_)) => {
                    metrics.registry_unavailable.inc();
                    waiting.get_or_insert_with(|| WaitingGuard::new(&metrics.registry_waiting));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Decodes one record value.
    pub async fn decode(&self, value: Option<&[u8]>) -> Result<RewardsEvent, DecodeError> {
        let bytes = match value {
            Some(v) if is_framed(v) => v,
            other => return Ok(RewardsEvent::decode(other)?),
        };
        let Some(registry) = &self.registry else {
            return Err(InvalidEvent::new(
                "unsupported_avro",
                "the value is Confluent-framed Avro (magic byte 0) but no schema registry is configured (registry.url)",
            )
            .into());
        };
        let (id, datum) = unframe(bytes)?;
        let schema = schema_for(registry, id).await?;
        check_event_shape(&schema.schema).map_err(|e| {
            InvalidEvent::new(
                "avro_schema_mismatch",
                format!("schema {id} is not a rewards event: {e}"),
            )
        })?;
        Ok(event_from_datum(&schema.schema, datum)?)
    }
}

/// Counts one record in `webhooks_registry_waiting_records` while it lives.
struct WaitingGuard<'a>(&'a prometheus::IntGauge);

impl<'a> WaitingGuard<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        WaitingGuard(gauge)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The schema of `id`, with lookup errors sorted into bad input and unavailability.
pub async fn schema_for(
    registry: &Registry,
    id: u32,
) -> Result<Arc<RegisteredSchema>, DecodeError> {
    registry.schema(id).await.map_err(|e| match e {
        LookupError::NotFound(_) => {
            DecodeError::Invalid(InvalidEvent::new("avro_unknown_schema", e.to_string()))
        }
        LookupError::BadSchema { .. } => {
            DecodeError::Invalid(InvalidEvent::new("avro_bad_schema", e.to_string()))
        }
        LookupError::Unavailable(text) => DecodeError::Unavailable(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as Avro;

    fn event_schema() -> Schema {
        Schema::parse_str(REWARDS_EVENT_SCHEMA).unwrap()
    }

    fn points_awarded(branch_extra: Option<Avro>) -> Avro {
        let data = branch_extra.unwrap_or(Avro::Union(
            0,
            Box::new(Avro::Record(vec![
                ("user_id".into(), Avro::String("usr_abc123".into())),
                ("points".into(), Avro::Long(150)),
                ("event_type".into(), Avro::String("purchase".into())),
                ("platform".into(), Avro::String("3news".into())),
            ])),
        ));
        Avro::Record(vec![
            (
                "event_type".into(),
                Avro::String("rewards.points_awarded".into()),
            ),
            ("data".into(), data),
            ("timestamp".into(), Avro::TimestampMillis(1_736_937_000_000)),
            ("client_id".into(), Avro::Union(0, Box::new(Avro::Null))),
        ])
    }

    #[test]
    fn the_guide_example_in_avro_gives_the_guide_body() {
        let schema = event_schema();
        check_event_shape(&schema).unwrap();
        let datum = apache_avro::to_avro_datum(&schema, points_awarded(None)).unwrap();
        let event = event_from_datum(&schema, &datum).unwrap();
        let json = RewardsEvent::decode(Some(
            br#"{"event_type":"rewards.points_awarded","data":{"user_id":"usr_abc123","points":150,"event_type":"purchase","platform":"3news"},"timestamp":"2025-01-15T10:30:00.000Z"}"#,
        ))
        .unwrap();
        assert_eq!(event, json);
        // The generic branch: JSON object text.
        let generic = Avro::Union(
            11,
            Box::new(Avro::String(r#"{"b":1.50,"a":[1,{"x":null}]}"#.into())),
        );
        let datum = apache_avro::to_avro_datum(&schema, points_awarded(Some(generic))).unwrap();
        let event = event_from_datum(&schema, &datum).unwrap();
        assert_eq!(
            serde_json::to_string(&event.data).unwrap(),
            r#"{"b":1.5,"a":[1,{"x":null}]}"#
        );
        let not_object = Avro::Union(11, Box::new(Avro::String("[1]".into())));
        let datum = apache_avro::to_avro_datum(&schema, points_awarded(Some(not_object))).unwrap();
        assert_eq!(
            event_from_datum(&schema, &datum).unwrap_err().code,
            "bad_data"
        );
    }

    #[test]
    fn truncated_and_over_long_datums_are_refused() {
        let schema = event_schema();
        let datum = apache_avro::to_avro_datum(&schema, points_awarded(None)).unwrap();
        // Every prefix, including those apache-avro alone would read as a null last field.
        for cut in 0..datum.len() {
            let err = event_from_datum(&schema, &datum[..cut]).unwrap_err();
            assert_eq!(err.code, "avro_truncated", "cut at {cut}: {err}");
        }
        let mut longer = datum.clone();
        longer.extend_from_slice(b"\x02xx");
        let err = event_from_datum(&schema, &longer).unwrap_err();
        assert_eq!(err.code, "avro_trailing_bytes", "{err}");
        // A length prefix far beyond the input is refused, not allocated.
        let huge = [0x02u8, 0xfe, 0xff, 0xff, 0xff, 0x0f];
        let string = Schema::parse_str(r#""string""#).unwrap();
        assert!(datum_to_json(&string, &huge).is_err());
    }

    #[test]
    fn schemas_not_of_the_events_shape_are_named() {
        #[rustfmt::skip]
        let cases = [
            (r#""string""#, "not a record"),
            (r#"{"type":"record","name":"E","fields":[{"name":"data","type":"string"},{"name":"timestamp","type":"string"}]}"#, "no field event_type"),
            (r#"{"type":"record","name":"E","fields":[{"name":"event_type","type":"int"},{"name":"data","type":"string"},{"name":"timestamp","type":"string"}]}"#, "event_type is not a string"),
            (r#"{"type":"record","name":"E","fields":[{"name":"event_type","type":"string"},{"name":"data","type":"long"},{"name":"timestamp","type":"string"}]}"#, "field data"),
            (r#"{"type":"record","name":"E","fields":[{"name":"event_type","type":"string"},{"name":"data","type":"string"},{"name":"timestamp","type":"long"}]}"#, "field timestamp"),
            (r#"{"type":"record","name":"E","fields":[{"name":"event_type","type":"string"},{"name":"data","type":"string"}]}"#, "no field timestamp"),
            (r#"{"type":"record","name":"E","fields":[{"name":"event_type","type":"string"},{"name":"data","type":"string"},{"name":"timestamp","type":"string"},{"name":"client_id","type":["null","long"]}]}"#, "client_id"),
        ];
        for (schema, expected) in cases {
            let err = check_event_shape(&Schema::parse_str(schema).unwrap()).unwrap_err();
            assert!(err.contains(expected), "{schema}: {err}");
        }
        // The first schema of this repository (data as JSON text, timestamp RFC 3339) fits.
        let old = r#"{"type":"record","name":"RewardsEvent","fields":[{"name":"event_type","type":"string"},
            {"name":"data","type":"string"},{"name":"timestamp","type":"string"},
            {"name":"client_id","type":["null","string"],"default":null}]}"#;
        check_event_shape(&Schema::parse_str(old).unwrap()).unwrap();
    }

    #[test]
    fn framing_round_trips_and_short_frames_are_named() {
        let framed = frame(0x0102_0304, b"xyz");
        assert_eq!(framed, b"\x00\x01\x02\x03\x04xyz");
        assert!(is_framed(&framed));
        assert_eq!(unframe(&framed).unwrap(), (0x0102_0304, &b"xyz"[..]));
        assert_eq!(unframe(&[0, 0, 0, 0]).unwrap_err().code, "avro_bad_frame");
        assert!(!is_framed(b"{}"));
    }

    #[tokio::test]
    async fn avro_without_a_registry_is_unsupported_and_json_still_decodes() {
        let decoder = EventDecoder::new(&RegistryConfig::default()).unwrap();
        let err = decoder.decode(Some(&frame(1, b""))).await.unwrap_err();
        match err {
            DecodeError::Invalid(e) => assert_eq!(e.code, "unsupported_avro"),
            other => panic!("{other:?}"),
        }
        let ok = decoder
            .decode(Some(
                br#"{"event_type":"a","data":{},"timestamp":"2025-01-15T10:30:00Z"}"#,
            ))
            .await
            .unwrap();
        assert_eq!(ok.timestamp, "2025-01-15T10:30:00.000Z");
    }
}
