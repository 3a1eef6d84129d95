//! The Avro → JSON mapping: a decoded Avro datum, walked together with its writer schema, as
//! the [`serde_json::Value`] a webhook body carries. `apache-avro`'s own conversion is lossy
//! (decimals and bytes become integer arrays, timestamps raw numbers, NaN an error, map order
//! random), so this one is ours. Every decision, as README "Avro events" tabulates it:
//!
//! | Avro | JSON |
//! |---|---|
//! | `null`, `boolean`, `string` | the same |
//! | `int`, `long` | a number (a `long` beyond ±2^53 is sent as JavaScript reads it: the nearest double, counted like JSON input) |
//! | `float` | the number the float's shortest decimal form names (`0.1f` → `0.1`, not `0.10000000149011612`) |
//! | `double` | the number |
//! | NaN, ±Infinity (`float`/`double`) | `null`, as `JSON.stringify` writes them |
//! | `bytes`, `fixed` | a base64 string (RFC 4648, padded) |
//! | `decimal` (bytes or fixed) | a string of its exact digits with `scale` decimals (`"12.50"`), since a double would round it |
//! | `big-decimal` | its exact digits as a string |
//! | `enum` | its symbol |
//! | union | the branch's value, unwrapped (no `{"type": value}` wrapper) |
//! | record | an object, fields in schema order (then `body.rs` puts integer-like keys first, as JavaScript does) |
//! | `map` | an object, keys in ascending byte order (the decoder does not keep the wire order, and a body must come out the same on every re-decode) |
//! | `array` | an array |
//! | `uuid` | its string form |
//! | `date` | `"YYYY-MM-DD"` |
//! | `time-millis`, `time-micros` | `"HH:MM:SS.sss"` (micros truncated to milliseconds) |
//! | `timestamp-millis`, `-micros`, `-nanos` | the body's ISO form, UTC with milliseconds and `Z`: `"2025-01-15T10:30:00.000Z"` (sub-millisecond digits truncated, as JSON timestamps are) |
//! | `local-timestamp-*` | the same without `Z` |
//! | `duration` | `{"months":…,"days":…,"milliseconds":…}` |
//!
//! A value with no JSON form (a timestamp outside what chrono represents) is a [`MappingError`].
//! Nesting is bounded by the schema, which the registry holds; a recursive schema's value is as
//! deep as its bytes, so depth is capped at [`MAX_DEPTH`] like JSON input (serde_json's 128).

use apache_avro::schema::{Name, NamesRef, Schema};
use apache_avro::types::Value as Avro;
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use serde_json::{Map, Number, Value};

/// Deepest nesting mapped (serde_json refuses JSON input nested 128 levels deep).
pub const MAX_DEPTH: usize = 127;

/// A value that has no JSON form; the record goes to the invalid topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

/// Maps `value`, decoded with `schema`, to JSON. `names` resolves named references
/// (`apache_avro::schema::ResolvedSchema::get_names`).
pub fn to_json(value: &Avro, schema: &Schema, names: &NamesRef<'_>) -> Result<Value, MappingError> {
    map(value, schema, names, 0)
}

fn resolve<'a>(schema: &'a Schema, names: &NamesRef<'a>) -> Result<&'a Schema, MappingError> {
    match schema {
        Schema::Ref { name } => lookup(name, names)
            .ok_or_else(|| MappingError(format!("schema reference {name} is not defined"))),
        other => Ok(other),
    }
}

fn lookup<'a>(name: &Name, names: &NamesRef<'a>) -> Option<&'a Schema> {
    names.get(name).copied().or_else(|| {
        names
            .iter()
            .find(|(n, _)| n.fullname(None) == name.fullname(None))
            .map(|(_, s)| *s)
    })
}

fn map(
    value: &Avro,
    schema: &Schema,
    names: &NamesRef<'_>,
    depth: usize,
) -> Result<Value, MappingError> {
    if depth > MAX_DEPTH {
        return Err(MappingError(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let schema = resolve(schema, names)?;
    Ok(match value {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(*b),
        Avro::Int(i) => Value::from(*i),
        Avro::Long(i) => Value::from(*i),
        Avro::Float(f) => float_number(f32_as_double(*f)),
        Avro::Double(d) => float_number(*d),
        Avro::String(s) => Value::String(s.clone()),
        Avro::Uuid(u) => Value::String(u.to_string()),
        Avro::Enum(_, symbol) => Value::String(symbol.clone()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::String(base64(b)),
        Avro::Decimal(d) => {
            let scale = match schema {
                Schema::Decimal(ds) => ds.scale,
                _ => 0,
            };
            let unscaled = num_bigint::BigInt::from(d.clone());
            Value::String(decimal_string(&unscaled.to_string(), scale))
        }
        Avro::BigDecimal(d) => Value::String(d.to_string()),
        Avro::Date(days) => {
            let date = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days((*days).into())))
                .ok_or_else(|| {
                    MappingError(format!("date {days} days from 1970 is out of range"))
                })?;
            Value::String(date.format("%Y-%m-%d").to_string())
        }
        Avro::TimeMillis(ms) => time_of_day(i64::from(*ms) * 1_000)?,
        Avro::TimeMicros(us) => time_of_day(*us)?,
        Avro::TimestampMillis(ms) => timestamp(*ms, 1_000, true)?,
        Avro::TimestampMicros(us) => timestamp(*us, 1_000_000, true)?,
        Avro::TimestampNanos(ns) => timestamp(*ns, 1_000_000_000, true)?,
        Avro::LocalTimestampMillis(ms) => timestamp(*ms, 1_000, false)?,
        Avro::LocalTimestampMicros(us) => timestamp(*us, 1_000_000, false)?,
        Avro::LocalTimestampNanos(ns) => timestamp(*ns, 1_000_000_000, false)?,
        Avro::Duration(d) => {
            let mut m = Map::new();
            m.insert("months".into(), Value::from(u32::from(d.months())));
            m.insert("days".into(), Value::from(u32::from(d.days())));
            m.insert("milliseconds".into(), Value::from(u32::from(d.millis())));
            Value::Object(m)
        }
        Avro::Union(index, inner) => {
            let branch = match schema {
                Schema::Union(u) => u.variants().get(*index as usize).ok_or_else(|| {
                    MappingError(format!("union branch {index} is not in the schema"))
                })?,
                other => other,
            };
            map(inner, branch, names, depth)?
        }
        Avro::Array(items) => {
            let item_schema = match schema {
                Schema::Array(a) => &*a.items,
                other => other,
            };
            Value::Array(
                items
                    .iter()
                    .map(|v| map(v, item_schema, names, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        Avro::Map(entries) => {
            let value_schema = match schema {
                Schema::Map(m) => &*m.types,
                other => other,
            };
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), map(&entries[k], value_schema, names, depth + 1)?);
            }
            Value::Object(out)
        }
        Avro::Record(fields) => {
            let field_schemas = match schema {
                Schema::Record(r) => Some(&r.fields),
                _ => None,
            };
            let mut out = Map::new();
            for (i, (name, v)) in fields.iter().enumerate() {
                let field_schema = field_schemas
                    .and_then(|f| f.get(i).filter(|f| &f.name == name))
                    .or_else(|| field_schemas.and_then(|f| f.iter().find(|f| &f.name == name)))
                    .map(|f| &f.schema)
                    .ok_or_else(|| {
                        MappingError(format!("record field {name} is not in the schema"))
                    })?;
                out.insert(name.clone(), map(v, field_schema, names, depth + 1)?);
            }
            Value::Object(out)
        }
    })
}

/// A finite double as a JSON number; NaN and the infinities as `null`, as `JSON.stringify`
/// writes them.
fn float_number(d: f64) -> Value {
    Number::from_f64(d).map_or(Value::Null, Value::Number)
}

/// The double that a float's shortest decimal form names: what a producer wrote as `0.1`.
fn f32_as_double(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    f.to_string().parse().unwrap_or(f64::from(f))
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An unscaled integer's digits (`-1250`) with `scale` decimals: `-12.50`.
fn decimal_string(unscaled: &str, scale: usize) -> String {
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", unscaled),
    };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// `units` per second since the epoch → the body's ISO form (milliseconds; `Z` when `utc`).
fn timestamp(value: i64, units_per_sec: i64, utc: bool) -> Result<Value, MappingError> {
    let secs = value.div_euclid(units_per_sec);
    let sub = value.rem_euclid(units_per_sec);
    let nanos = (i128::from(sub) * 1_000_000_000 / i128::from(units_per_sec)) as u32;
    // Truncated to milliseconds, as JSON timestamps are.
    let nanos = nanos - nanos % 1_000_000;
    let t: DateTime<Utc> = DateTime::from_timestamp(secs, nanos).ok_or_else(|| {
        MappingError(format!(
            "timestamp {value} (1/{units_per_sec} s) is out of range"
        ))
    })?;
    let text = t.to_rfc3339_opts(SecondsFormat::Millis, true);
    Ok(Value::String(if utc {
        text
    } else {
        text.trim_end_matches('Z').to_string()
    }))
}

/// Microseconds after midnight → `HH:MM:SS.sss`.
fn time_of_day(micros: i64) -> Result<Value, MappingError> {
    let secs = u32::try_from(micros.div_euclid(1_000_000)).ok();
    let nanos = (micros.rem_euclid(1_000_000) / 1_000 * 1_000_000) as u32;
    let t = secs
        .and_then(|s| NaiveTime::from_num_seconds_from_midnight_opt(s, nanos))
        .ok_or_else(|| MappingError(format!("time of day {micros} µs is out of range")))?;
    Ok(Value::String(t.format("%H:%M:%S%.3f").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema::ResolvedSchema;

    /// Encodes `value` with `schema` and maps the decoded datum, as the event decoder does.
    fn round(schema: &str, value: Avro) -> Result<Value, MappingError> {
        let schema = Schema::parse_str(schema).unwrap();
        let bytes = apache_avro::to_avro_datum(&schema, value).unwrap();
        let decoded = apache_avro::from_avro_datum(&schema, &mut &bytes[..], None).unwrap();
        let resolved = ResolvedSchema::try_from(&schema).unwrap();
        to_json(&decoded, &schema, resolved.get_names())
    }

    fn json(schema: &str, value: Avro) -> String {
        let v = round(schema, value).unwrap();
        let mut out = Vec::new();
        crate::body::write_js_json(&mut out, &v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scalars_map_as_the_table_says() {
        #[rustfmt::skip]
        let cases: Vec<(&str, Avro, &str)> = vec![
            (r#""null""#, Avro::Null, "null"),
            (r#""boolean""#, Avro::Boolean(true), "true"),
            (r#""int""#, Avro::Int(-7), "-7"),
            (r#""long""#, Avro::Long(150), "150"),
            (r#""long""#, Avro::Long(9_007_199_254_740_993), "9007199254740992"),
            (r#""float""#, Avro::Float(0.1), "0.1"),
            (r#""float""#, Avro::Float(150.0), "150"),
            (r#""float""#, Avro::Float(f32::NAN), "null"),
            (r#""double""#, Avro::Double(1e21), "1e+21"),
            (r#""double""#, Avro::Double(-0.0), "0"),
            (r#""double""#, Avro::Double(f64::NAN), "null"),
            (r#""double""#, Avro::Double(f64::INFINITY), "null"),
            (r#""double""#, Avro::Double(f64::NEG_INFINITY), "null"),
            (r#""string""#, Avro::String("é\n\u{2028}".into()), "\"é\\n\u{2028}\""),
            (r#""bytes""#, Avro::Bytes(vec![0, 1, 2, 250]), "\"AAEC+g==\""),
            (r#"{"type":"fixed","name":"F","size":3}"#, Avro::Fixed(3, vec![1, 2, 3]), "\"AQID\""),
            (r#"{"type":"enum","name":"E","symbols":["gold","silver"]}"#, Avro::Enum(1, "silver".into()), "\"silver\""),
            (r#"{"type":"bytes","logicalType":"decimal","precision":6,"scale":2}"#, Avro::Decimal(vec![0x04, 0xe2].into()), "\"12.50\""),
            (r#"{"type":"bytes","logicalType":"decimal","precision":6,"scale":2}"#, Avro::Decimal(vec![0xff, 0xf9].into()), "\"-0.07\""),
            (r#"{"type":"bytes","logicalType":"decimal","precision":6,"scale":0}"#, Avro::Decimal(vec![0x04, 0xe2].into()), "\"1250\""),
            (r#"{"type":"fixed","name":"D","size":4,"logicalType":"decimal","precision":8,"scale":3}"#, Avro::Decimal(vec![0, 0, 0x30, 0x39].into()), "\"12.345\""),
            (r#"{"type":"string","logicalType":"uuid"}"#, Avro::Uuid("67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap()), "\"67e55044-10b1-426f-9247-bb680e5fe0c8\""),
            (r#"{"type":"int","logicalType":"date"}"#, Avro::Date(20103), "\"2025-01-15\""),
            (r#"{"type":"int","logicalType":"time-millis"}"#, Avro::TimeMillis(37_800_123), "\"10:30:00.123\""),
            (r#"{"type":"long","logicalType":"time-micros"}"#, Avro::TimeMicros(37_800_123_456), "\"10:30:00.123\""),
            (r#"{"type":"long","logicalType":"timestamp-millis"}"#, Avro::TimestampMillis(1_736_937_000_000), "\"2025-01-15T10:30:00.000Z\""),
            (r#"{"type":"long","logicalType":"timestamp-micros"}"#, Avro::TimestampMicros(1_736_937_000_123_999), "\"2025-01-15T10:30:00.123Z\""),
            (r#"{"type":"long","logicalType":"timestamp-nanos"}"#, Avro::TimestampNanos(1_736_937_000_123_999_999), "\"2025-01-15T10:30:00.123Z\""),
            (r#"{"type":"long","logicalType":"timestamp-millis"}"#, Avro::TimestampMillis(-1), "\"1969-12-31T23:59:59.999Z\""),
            (r#"{"type":"long","logicalType":"local-timestamp-millis"}"#, Avro::LocalTimestampMillis(1_736_937_000_000), "\"2025-01-15T10:30:00.000\""),
        ];
        for (schema, value, expected) in cases {
            assert_eq!(json(schema, value.clone()), expected, "{schema} {value:?}");
        }
    }

    #[test]
    fn records_keep_field_order_unions_unwrap_maps_sort() {
        let schema = r#"{"type":"record","name":"R","fields":[
            {"name":"z","type":"int"},
            {"name":"a","type":["null","string",{"type":"record","name":"In","fields":[{"name":"x","type":"long"}]}]},
            {"name":"m","type":{"type":"map","values":"int"}},
            {"name":"l","type":{"type":"array","items":"In"}}]}"#;
        let value = Avro::Record(vec![
            ("z".into(), Avro::Int(1)),
            (
                "a".into(),
                Avro::Union(2, Box::new(Avro::Record(vec![("x".into(), Avro::Long(5))]))),
            ),
            (
                "m".into(),
                Avro::Map(
                    [("b", 2), ("a", 1), ("10", 3)]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), Avro::Int(v)))
                        .collect(),
                ),
            ),
            (
                "l".into(),
                Avro::Array(vec![Avro::Record(vec![("x".into(), Avro::Long(6))])]),
            ),
        ]);
        assert_eq!(
            json(schema, value),
            r#"{"z":1,"a":{"x":5},"m":{"10":3,"a":1,"b":2},"l":[{"x":6}]}"#
        );
        let nullable =
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":["null","string"]}]}"#;
        assert_eq!(
            json(
                nullable,
                Avro::Record(vec![("a".into(), Avro::Union(0, Box::new(Avro::Null)))])
            ),
            r#"{"a":null}"#
        );
    }

    #[test]
    fn values_without_a_json_form_are_errors() {
        let err = round(
            r#"{"type":"long","logicalType":"timestamp-millis"}"#,
            Avro::TimestampMillis(i64::MAX),
        )
        .unwrap_err();
        assert!(err.0.contains("out of range"), "{err}");
    }

    #[test]
    fn decimal_digits_are_placed_exactly() {
        for (digits, scale, expected) in [
            ("0", 2, "0.00"),
            ("5", 3, "0.005"),
            ("-5", 1, "-0.5"),
            (
                "123456789012345678901234567890",
                10,
                "12345678901234567890.1234567890",
            ),
        ] {
            assert_eq!(decimal_string(digits, scale), expected);
        }
    }
}
