//! Producing the processor's output records so that no single record can stop it.
//!
//! Every produce error is classified by its librdkafka code ([`classify`]):
//!
//! - **permanent for this record** (too large, invalid record, a broker policy refusing it): the
//!   record can never be written; it is logged with its topic and key, counted in
//!   `webhooks_produce_errors_total{kind="permanent"}` and passed over, so the input record that
//!   produced it is still released and consumption goes on;
//! - **retriable** (broker unreachable, leader moving, timeouts, a full local queue,
//!   authorisation or missing topics an operator can fix): the same record is produced again
//!   with a capped backoff until the broker takes it. The input offset stays unreleased meanwhile,
//!   so a crash re-reads it; the caller's in-flight limit turns the wait into back-pressure;
//! - **fatal**: the idempotent producer itself failed (fenced, sequence lost); nothing it sends
//!   again can succeed, so the error is returned and the process stops (and is restarted).
//!
//! Outputs are sized by design to fit [`max_message_bytes`]; see `delivery::engine` for task
//! records and `processor` for the invalid copy.

use std::time::Duration;

use super::OutputProducer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::util::Timeout;
use tracing::{error, warn};

use crate::config::Config;
use crate::metrics::{Metrics, ProduceErrorKind};

/// librdkafka's default `message.max.bytes`: the largest record the producer sends.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// Room kept below the limit for the record's framing (key, headers, batch overhead).
pub const RECORD_OVERHEAD_BYTES: usize = 8 * 1024;

/// The largest record our producer sends: `message.max.bytes` from `kafka.properties`, or
/// librdkafka's default.
pub fn max_message_bytes(config: &Config) -> usize {
    config
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// What a produce error means for the record that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// This record can never be written: record it and pass over it.
    Permanent,
    /// Try the same record again later.
    Retriable,
    /// The producer is unusable: stop the process.
    Fatal,
}

/// The produce-error decision as a pure function of librdkafka's code.
pub fn classify(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidRecord
        | C::MessageBatchTooLarge
        | C::PolicyViolation
        | C::InvalidMessage
        | C::InvalidMessageSize
        | C::InvalidArgument
        | C::BadMessage => ErrorClass::Permanent,
        // librdkafka also raises its fatal error for a lost sequence; `produce` checks that too.
        C::Fatal | C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch => ErrorClass::Fatal,
        _ => ErrorClass::Retriable,
    }
}

fn code_of(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// One output record, owned, so it can be produced again after a retriable error.
#[derive(Debug, Clone)]
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

impl Output {
    fn record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut r = FutureRecord::to(&self.topic);
        if let Some(k) = &self.key {
            r = r.key(k.as_slice());
        }
        if let Some(v) = &self.value {
            r = r.payload(v.as_slice());
        }
        if let Some(h) = &self.headers {
            r = r.headers(h.clone());
        }
        r
    }

    fn key_text(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }
}

/// How one output ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produced {
    Acknowledged,
    /// Refused for good; logged and counted.
    Skipped,
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Produces `output` until the broker acknowledges it or refuses it for good. Returns an error
/// only when the producer itself is unusable.
pub async fn produce(
    producer: &OutputProducer,
    output: &Output,
    metrics: &Metrics,
) -> anyhow::Result<Produced> {
    let mut backoff = BACKOFF_START;
    loop {
        let err = match producer.send(output.record(), Timeout::Never).await {
            Ok(_) => return Ok(Produced::Acknowledged),
            Err((e, _)) => e,
        };
        let class = match code_of(&err) {
            Some(code) => classify(code),
            None => ErrorClass::Retriable,
        };
        let class = if producer.client().fatal_error().is_some() {
            ErrorClass::Fatal
        } else {
            class
        };
        match class {
            ErrorClass::Permanent => {
                metrics.produce_error(ProduceErrorKind::Permanent);
                error!(
                    topic = %output.topic, key = %output.key_text(), error = %err,
                    bytes = output.value.as_ref().map_or(0, Vec::len),
                    "output record refused for good; passed over"
                );
                return Ok(Produced::Skipped);
            }
            ErrorClass::Fatal => {
                metrics.produce_error(ProduceErrorKind::Fatal);
                return Err(anyhow::anyhow!(
                    "the Kafka producer failed fatally producing to {:?}: {err}",
                    output.topic
                ));
            }
            ErrorClass::Retriable => {
                metrics.produce_error(ProduceErrorKind::Retriable);
                warn!(
                    topic = %output.topic, key = %output.key_text(), error = %err,
                    retry_in_ms = backoff.as_millis() as u64,
                    "producing failed; trying again"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Produces every output concurrently; returns once each is acknowledged or passed over.
pub async fn produce_all(
    producer: &OutputProducer,
    outputs: &[Output],
    metrics: &Metrics,
) -> anyhow::Result<()> {
    // An attempt writes one or two records: those are joined in place, without the boxed set
    // of futures `try_join_all` allocates for any number.
    match outputs {
        [] => Ok(()),
        [one] => produce(producer, one, metrics).await.map(|_| ()),
        [first, second] => futures::future::try_join(
            produce(producer, first, metrics),
            produce(producer, second, metrics),
        )
        .await
        .map(|_| ()),
        _ => futures::future::try_join_all(outputs.iter().map(|o| produce(producer, o, metrics)))
            .await
            .map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_errors_are_classified_by_code() {
        use RDKafkaErrorCode as C;
        let table = [
            (C::MessageSizeTooLarge, ErrorClass::Permanent),
            (C::InvalidRecord, ErrorClass::Permanent),
            (C::MessageBatchTooLarge, ErrorClass::Permanent),
            (C::PolicyViolation, ErrorClass::Permanent),
            (C::InvalidMessageSize, ErrorClass::Permanent),
            (C::MessageTimedOut, ErrorClass::Retriable),
            (C::QueueFull, ErrorClass::Retriable),
            (C::BrokerTransportFailure, ErrorClass::Retriable),
            (C::AllBrokersDown, ErrorClass::Retriable),
            (C::NotLeaderForPartition, ErrorClass::Retriable),
            (C::UnknownTopicOrPartition, ErrorClass::Retriable),
            (C::TopicAuthorizationFailed, ErrorClass::Retriable),
            (C::RequestTimedOut, ErrorClass::Retriable),
            (C::NotEnoughReplicas, ErrorClass::Retriable),
            (C::ProducerFenced, ErrorClass::Fatal),
            (C::Fatal, ErrorClass::Fatal),
            (C::InvalidProducerEpoch, ErrorClass::Fatal),
        ];
        for (code, class) in table {
            assert_eq!(classify(code), class, "{code:?}");
        }
    }

    #[test]
    fn the_limit_is_the_producers_message_max_bytes() {
        let mut c = Config::default();
        assert_eq!(max_message_bytes(&c), DEFAULT_MAX_MESSAGE_BYTES);
        c.kafka
            .properties
            .insert("message.max.bytes".into(), "2000000".into());
        assert_eq!(max_message_bytes(&c), 2_000_000);
    }
}
