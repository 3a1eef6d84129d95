//! Our own records as registered Avro, for platforms that want every topic in Avro
//! (`registry.output_format = "avro"`): delivery-log records (`schemas/delivery-log-record.avsc`)
//! and failed records (`schemas/delivery-task.avsc`). The schemas are registered once per
//! process under the configured subject strategy (`<topic>-value`, or the record's full name);
//! a registry that does not answer is waited for, like a broker that does not (the input
//! offset is held). Readers ([`decode_record`]) take either form: a value in the Confluent
//! framing is decoded with the schema its id names, anything else is JSON, so the replay job,
//! `failed list` and `deliveries show` read what any version of the processor wrote.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OnceCell;
use tracing::warn;

use super::registry::Registry;
use super::{datum_to_json, frame, is_framed, schema_for, unframe, DecodeError};
use crate::config::RegistryConfig;

pub const DELIVERY_LOG_SCHEMA: &str = include_str!("../../schemas/delivery-log-record.avsc");
pub const DELIVERY_TASK_SCHEMA: &str = include_str!("../../schemas/delivery-task.avsc");
pub const SUBSCRIPTION_SCHEMA: &str = include_str!("../../schemas/subscription.avsc");

/// The subject a schema is registered under: `<topic>-value` (Confluent's
/// TopicNameStrategy) or, with `record_name`, the schema's full name (RecordNameStrategy).
pub fn subject(strategy: &str, topic: &str, schema: &Schema) -> String {
    match (strategy, schema) {
        ("record_name", Schema::Record(r)) => r.name.fullname(None),
        _ => format!("{topic}-value"),
    }
}

/// Encodes `record` (a serde struct of the schema's shape) as an Avro datum of `schema`.
pub fn encode<T: Serialize>(schema: &Schema, record: &T) -> anyhow::Result<Vec<u8>> {
    let value = apache_avro::to_value(record)?.resolve(schema)?;
    Ok(apache_avro::to_avro_datum(schema, value)?)
}

/// One of our record kinds, written as registered Avro to one topic.
pub struct AvroOutput {
    registry: Arc<Registry>,
    schema_text: &'static str,
    schema: Schema,
    subject: String,
    id: OnceCell<u32>,
}

impl AvroOutput {
    /// The writer of `schema_text` records to `topic`.
    pub fn new(
        registry: Arc<Registry>,
        config: &RegistryConfig,
        topic: &str,
        schema_text: &'static str,
    ) -> anyhow::Result<AvroOutput> {
        let schema = Schema::parse_str(schema_text)?;
        Ok(AvroOutput {
            subject: subject(&config.subject_strategy, topic, &schema),
            registry,
            schema_text,
            schema,
            id: OnceCell::new(),
        })
    }

    /// The registered id, registering the schema on first use; waits (with a backoff of up to
    /// 5 s) while the registry does not answer.
    async fn id(&self) -> u32 {
        *self
            .id
            .get_or_init(|| async {
                let mut backoff = Duration::from_millis(200);
                loop {
                    match self
                        .registry
                        .register(&self.subject, self.schema_text)
                        .await
                    {
                        Ok(id) => return id,
                        Err(e) => {
                            warn!(
                                subject = %self.subject, error = %format!("{e:#}"),
                                "registering the schema of our output failed; trying again"
                            );
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            })
            .await
    }

    /// `record` as a framed value.
    pub async fn encode<T: Serialize>(&self, record: &T) -> anyhow::Result<Vec<u8>> {
        let datum = encode(&self.schema, record)?;
        Ok(frame(self.id().await, &datum))
    }
}

/// Reads one of our records in either form: Confluent-framed Avro through `registry`, else JSON.
pub async fn decode_record<T: DeserializeOwned>(
    registry: Option<&Registry>,
    value: &[u8],
) -> Result<T, DecodeError> {
    if !is_framed(value) {
        return serde_json::from_slice(value).map_err(|e| {
            DecodeError::Invalid(crate::events::InvalidEvent::new("bad_json", e.to_string()))
        });
    }
    let Some(registry) = registry else {
        return Err(DecodeError::Invalid(crate::events::InvalidEvent::new(
            "unsupported_avro",
            "the record is Avro (magic byte 0) but no schema registry is configured (registry.url)",
        )));
    };
    let (id, datum) = unframe(value)?;
    let schema = schema_for(registry, id).await?;
    let json = datum_to_json(&schema.schema, datum)?;
    serde_json::from_value(json).map_err(|e| {
        DecodeError::Invalid(crate::events::InvalidEvent::new(
            "avro_schema_mismatch",
            format!("schema {id} is not of this record's shape: {e}"),
        ))
    })
}

/// [`decode_record`], waiting while the registry does not answer, for bounded tools: the
/// inner error is an undecodable record (reported and passed over); the outer one a registry
/// still unavailable after `patience` (the job fails rather than skip records it could read).
pub async fn decode_record_waiting<T: DeserializeOwned>(
    registry: Option<&Registry>,
    value: &[u8],
    patience: Duration,
) -> anyhow::Result<Result<T, String>> {
    let start = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match decode_record(registry, value).await {
            Ok(v) => return Ok(Ok(v)),
            Err(DecodeError::Invalid(e)) => return Ok(Err(e.to_string())),
            Err(DecodeError::Unavailable(e)) => {
                if start.elapsed() >= patience {
                    anyhow::bail!(
                        "the schema registry did not answer for {} s: {e}",
                        patience.as_secs()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How long a bounded tool waits for an unavailable registry before it fails.
pub const TOOL_PATIENCE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{DeliveryLogRecord, DeliveryTask, ReplayMarker};
    use crate::kafka::SourceRef;

    fn source() -> SourceRef {
        SourceRef {
            topic: "rewards.events".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_736_937_000_000),
        }
    }

    fn back<T: DeserializeOwned>(schema_text: &str, datum: &[u8]) -> T {
        let schema = Schema::parse_str(schema_text).unwrap();
        serde_json::from_value(datum_to_json(&schema, datum).unwrap()).unwrap()
    }

    #[test]
    fn every_schema_in_the_repository_parses() {
        for text in [
            super::super::REWARDS_EVENT_SCHEMA,
            DELIVERY_LOG_SCHEMA,
            DELIVERY_TASK_SCHEMA,
            SUBSCRIPTION_SCHEMA,
        ] {
            Schema::parse_str(text).unwrap();
        }
    }

    #[test]
    fn delivery_log_records_round_trip_through_their_schema() {
        let schema = Schema::parse_str(DELIVERY_LOG_SCHEMA).unwrap();
        for record in [
            DeliveryLogRecord {
                delivery_id: "dlv_1".into(),
                subscription_id: "sub_1".into(),
                event_type: "rewards.points_awarded".into(),
                idempotency_key: "k".into(),
                source: source(),
                attempt: 2,
                outcome: "http_error".into(),
                http_status: Some(503),
                error: Some("HTTP 503".into()),
                duration_ms: 12,
                attempted_at: "2025-01-15T10:30:00.000Z".into(),
                next_attempt_at: Some("2025-01-15T10:30:05.000Z".into()),
                replay: Some(ReplayMarker {
                    run_id: "rpl_1".into(),
                    failed: SourceRef {
                        timestamp_ms: None,
                        ..source()
                    },
                    replayed_at_ms: 9,
                }),
            },
            DeliveryLogRecord {
                delivery_id: "dlv_2".into(),
                subscription_id: "sub_1".into(),
                event_type: "x".into(),
                idempotency_key: "k".into(),
                source: SourceRef {
                    timestamp_ms: None,
                    ..source()
                },
                attempt: 1,
                outcome: "success".into(),
                http_status: None,
                error: None,
                duration_ms: 0,
                attempted_at: "2025-01-15T10:30:00.000Z".into(),
                next_attempt_at: None,
                replay: None,
            },
        ] {
            let datum = encode(&schema, &record).unwrap();
            assert_eq!(
                back::<DeliveryLogRecord>(DELIVERY_LOG_SCHEMA, &datum),
                record
            );
            // The engine writes the borrowed form: the same datum, and the same JSON.
            assert_eq!(encode(&schema, &record.as_entry()).unwrap(), datum);
            assert_eq!(
                serde_json::to_string(&record.as_entry()).unwrap(),
                serde_json::to_string(&record).unwrap()
            );
        }
    }

    #[test]
    fn failed_records_round_trip_through_the_task_schema() {
        let schema = Schema::parse_str(DELIVERY_TASK_SCHEMA).unwrap();
        let task = DeliveryTask {
            delivery_id: "dlv_x".into(),
            subscription_id: "sub_1".into(),
            event_type: "rewards.points_awarded".into(),
            idempotency_key: "k".into(),
            body: "{\"event_type\":\"é\"}".into(),
            body_by_reference: false,
            attempt: 4,
            due_at_ms: 1,
            first_attempt_at_ms: 0,
            source: source(),
            last_error: Some("timeout".into()),
            last_status: Some(500),
            last_outcome: Some("timeout".into()),
            client_id: Some(Some("app1".into())),
            failed_at_ms: Some(7),
            replay: None,
        };
        for t in [
            task.clone(),
            DeliveryTask {
                client_id: Some(None),
                body: "".into(),
                body_by_reference: true,
                last_status: None,
                ..task
            },
        ] {
            let datum = encode(&schema, &t).unwrap();
            assert_eq!(back::<DeliveryTask>(DELIVERY_TASK_SCHEMA, &datum), t);
        }
    }

    #[test]
    fn subjects_follow_the_strategy() {
        let schema = Schema::parse_str(DELIVERY_LOG_SCHEMA).unwrap();
        assert_eq!(
            subject("topic_name", "webhooks.delivery-log", &schema),
            "webhooks.delivery-log-value"
        );
        assert_eq!(
            subject("record_name", "webhooks.delivery-log", &schema),
            "com.mgpass.webhooks.DeliveryLogRecord"
        );
    }
}
