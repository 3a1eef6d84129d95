//! JSON → Avro, guided by a schema: how `produce-sample --format avro` (and the tests) write a
//! rewards event given as JSON in `schemas/rewards-event.avsc`. The inverse of [`super::json`]
//! for the types the event schema uses: a JSON object becomes the record of the event's type
//! when it has exactly that record's fields (in any order; the record's order is what a
//! receiver then sees), and otherwise the generic branch, the JSON object text, so nothing a
//! producer sends is lost or reordered.

use apache_avro::schema::{Name, NamesRef, ResolvedSchema, Schema};
use apache_avro::types::Value as Avro;
use serde_json::Value;

use crate::events::KNOWN_EVENT_TYPES;

/// The event `{"event_type", "data", "timestamp", "client_id"?}` as a value of the event
/// schema `schema` (ours: the data union holds one record per known type, in
/// [`KNOWN_EVENT_TYPES`] order, then the JSON-text string).
pub fn event_to_avro(event: &Value, schema: &Schema) -> Result<Avro, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    let names = resolved.get_names();
    let Schema::Record(record) = schema else {
        return Err("the event schema is not a record".into());
    };
    let field = |name: &str| {
        record
            .fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.schema)
            .ok_or_else(|| format!("the event schema has no field {name}"))
    };
    let event_type = event["event_type"]
        .as_str()
        .ok_or("event_type is not a string")?;
    let data = &event["data"];
    let Schema::Union(union) = field("data")? else {
        return Err("the event schema's data is not a union".into());
    };
    let variants = union.variants();
    let generic = variants
        .iter()
        .position(|v| matches!(v, Schema::String))
        .ok_or("the data union has no string branch")?;
    let typed = KNOWN_EVENT_TYPES
        .iter()
        .position(|t| *t == event_type)
        .filter(|i| *i < generic)
        .and_then(|i| Some((i, to_avro(data, &variants[i], names).ok()?)));
    let data = match typed {
        Some((i, v)) => Avro::Union(i as u32, Box::new(v)),
        None => Avro::Union(
            generic as u32,
            Box::new(Avro::String(
                serde_json::to_string(data).map_err(|e| e.to_string())?,
            )),
        ),
    };
    Ok(Avro::Record(vec![
        (
            "event_type".into(),
            to_avro(&event["event_type"], field("event_type")?, names)?,
        ),
        ("data".into(), data),
        (
            "timestamp".into(),
            to_avro(&event["timestamp"], field("timestamp")?, names)?,
        ),
        (
            "client_id".into(),
            to_avro(
                event.get("client_id").unwrap_or(&Value::Null),
                field("client_id")?,
                names,
            )?,
        ),
    ]))
}

/// `value` as a value of `schema`, or why it does not fit.
pub fn to_avro(value: &Value, schema: &Schema, names: &NamesRef<'_>) -> Result<Avro, String> {
    let schema = match schema {
        Schema::Ref { name } => lookup(name, names).ok_or(format!("unknown reference {name}"))?,
        other => other,
    };
    let mismatch = || format!("{value} does not fit {schema:?}");
    Ok(match (schema, value) {
        (Schema::Null, Value::Null) => Avro::Null,
        (Schema::Boolean, Value::Bool(b)) => Avro::Boolean(*b),
        (Schema::Int, Value::Number(n)) => Avro::Int(
            n.as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(mismatch)?,
        ),
        (Schema::Long, Value::Number(n)) => Avro::Long(n.as_i64().ok_or_else(mismatch)?),
        (Schema::Double, Value::Number(n)) => Avro::Double(n.as_f64().ok_or_else(mismatch)?),
        (Schema::Float, Value::Number(n)) => Avro::Float(n.as_f64().ok_or_else(mismatch)? as f32),
        (Schema::String, Value::String(s)) => Avro::String(s.clone()),
        (Schema::Enum(e), Value::String(s)) => {
            let i = e.symbols.iter().position(|x| x == s).ok_or_else(mismatch)?;
            Avro::Enum(i as u32, s.clone())
        }
        (Schema::TimestampMillis, Value::String(s)) => {
            Avro::TimestampMillis(parse_time(s)?.timestamp_millis())
        }
        (Schema::TimestampMicros, Value::String(s)) => {
            Avro::TimestampMicros(parse_time(s)?.timestamp_micros())
        }
        (Schema::Array(a), Value::Array(items)) => Avro::Array(
            items
                .iter()
                .map(|v| to_avro(v, &a.items, names))
                .collect::<Result<_, _>>()?,
        ),
        (Schema::Map(m), Value::Object(entries)) => Avro::Map(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_avro(v, &m.types, names)?)))
                .collect::<Result<_, String>>()?,
        ),
        (Schema::Record(r), Value::Object(entries)) => {
            if let Some(extra) = entries
                .keys()
                .find(|k| !r.fields.iter().any(|f| &f.name == *k))
            {
                return Err(format!("{} has no field {extra}", r.name));
            }
            let mut fields = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let v = entries.get(&f.name).unwrap_or(&Value::Null);
                fields.push((f.name.clone(), to_avro(v, &f.schema, names)?));
            }
            Avro::Record(fields)
        }
        (Schema::Union(u), v) => {
            let (i, inner) = u
                .variants()
                .iter()
                .enumerate()
                .find_map(|(i, s)| to_avro(v, s, names).ok().map(|x| (i, x)))
                .ok_or_else(mismatch)?;
            Avro::Union(i as u32, Box::new(inner))
        }
        _ => return Err(mismatch()),
    })
}

fn lookup<'a>(name: &Name, names: &NamesRef<'a>) -> Option<&'a Schema> {
    names.get(name).copied().or_else(|| {
        names
            .iter()
            .find(|(n, _)| n.fullname(None) == name.fullname(None))
            .map(|(_, s)| *s)
    })
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{s:?} is not RFC 3339: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::{event_from_datum, REWARDS_EVENT_SCHEMA};
    use crate::events::RewardsEvent;

    #[test]
    fn every_sample_event_encodes_to_its_record_and_decodes_to_its_json_twin() {
        let schema = Schema::parse_str(REWARDS_EVENT_SCHEMA).unwrap();
        for (i, event_type) in KNOWN_EVENT_TYPES.iter().enumerate() {
            let json = crate::commands::sample_event(event_type, "usr_1", Some("app"));
            let avro = event_to_avro(&json, &schema).unwrap();
            let Avro::Record(fields) = &avro else {
                panic!()
            };
            assert!(
                matches!(&fields[1].1, Avro::Union(b, _) if *b as usize == i),
                "{event_type} uses its own record"
            );
            let datum = apache_avro::to_avro_datum(&schema, avro).unwrap();
            let from_avro = event_from_datum(&schema, &datum).unwrap();
            let from_json =
                RewardsEvent::decode(Some(&serde_json::to_vec(&json).unwrap())).unwrap();
            assert_eq!(from_avro, from_json, "{event_type}");
        }
    }

    #[test]
    fn data_that_fits_no_record_goes_as_json_text() {
        let schema = Schema::parse_str(REWARDS_EVENT_SCHEMA).unwrap();
        let json = serde_json::json!({
            "event_type": "rewards.points_awarded",
            "data": {"user_id": "u", "points": 1.5, "extra": {"deep": [1, 2]}},
            "timestamp": "2025-01-15T10:30:00.000Z",
        });
        let avro = event_to_avro(&json, &schema).unwrap();
        let datum = apache_avro::to_avro_datum(&schema, avro).unwrap();
        let event = event_from_datum(&schema, &datum).unwrap();
        assert_eq!(
            serde_json::to_string(&event.data).unwrap(),
            r#"{"user_id":"u","points":1.5,"extra":{"deep":[1,2]}}"#
        );
    }
}
