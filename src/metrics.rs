//! The closed set of Prometheus metrics. Every metric is defined here and nowhere else, in base
//! units (seconds, messages), counters ending in `_total`. Every label value comes from a typed
//! enum with an `ALL` list (or, for `topic`/`partition`, from the deployment's own assignment), so
//! the set of series is bounded: never raw error text, ids or URLs. `event_type` is one of the
//! guide's event types or `other`.
//!
//! Every labelled series except consumer lag is created at start with the value 0, so a query or
//! an alert sees it before its first event; consumer-lag series follow the consumers'
//! assignments (created from librdkafka statistics, removed when a partition is no longer
//! assigned). The hot path uses handles resolved at start: counting an attempt is an index
//! computation and an atomic add, with no label hashing and no allocation. Each [`Metrics`] owns
//! its registry, so tests assert on an isolated instance.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::delivery::http::Outcome;
use crate::delivery::Tier;
use crate::events::KNOWN_EVENT_TYPES;

/// Buckets of the attempt duration histogram, seconds.
const ATTEMPT_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the end-to-end latency histogram, seconds: from a first-attempt success on a fast
/// endpoint to a success after the last retry (31 s) and replays.
const LATENCY_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
    3600.0,
];
/// Buckets of the retry lateness histogram, seconds.
const LATENESS_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `event_type` label: one of [`KNOWN_EVENT_TYPES`] or `other`.
pub const OTHER_EVENT_TYPE: &str = "other";
const EVENT_TYPES: usize = KNOWN_EVENT_TYPES.len() + 1;

/// Index of an event type's label value: its place in [`KNOWN_EVENT_TYPES`], or the last index
/// (`other`) for any other type.
pub fn event_type_index(event_type: &str) -> usize {
    KNOWN_EVENT_TYPES
        .iter()
        .position(|t| *t == event_type)
        .unwrap_or(KNOWN_EVENT_TYPES.len())
}

/// The bounded `event_type` label value of an event type.
pub fn event_type_label(event_type: &str) -> &'static str {
    KNOWN_EVENT_TYPES
        .get(event_type_index(event_type))
        .copied()
        .unwrap_or(OTHER_EVENT_TYPE)
}

fn event_type_labels() -> impl Iterator<Item = &'static str> {
    KNOWN_EVENT_TYPES
        .iter()
        .copied()
        .chain(std::iter::once(OTHER_EVENT_TYPE))
}

/// Declares a label enum: variants with their label values, `ALL`, `as_str` and `index`.
macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_enum!(
    /// What became of a consumed event record (`webhooks_events_total{outcome}`).
    EventOutcome {
        Matched => "matched",
        Unmatched => "unmatched",
        Invalid => "invalid",
    }
);

label_enum!(
    /// Why an event record was undecodable: the codes of [`crate::events::InvalidEvent`].
    InvalidEventReason {
        EmptyValue => "empty_value",
        UnsupportedAvro => "unsupported_avro",
        NotJsonObject => "not_json_object",
        BadJson => "bad_json",
        BadEventType => "bad_event_type",
        MissingField => "missing_field",
        BadData => "bad_data",
        BadTimestamp => "bad_timestamp",
        BadClientId => "bad_client_id",
        DuplicateKey => "duplicate_key",
        EventTooLarge => "event_too_large",
        /// Magic byte 0 but shorter than the 5-byte Confluent header.
        AvroBadFrame => "avro_bad_frame",
        /// The registry has no schema of the record's id (its 404 with code 40403).
        AvroUnknownSchema => "avro_unknown_schema",
        /// The id names a schema that is not Avro, or that we cannot parse.
        AvroBadSchema => "avro_bad_schema",
        /// The schema is not of the rewards event's shape.
        AvroSchemaMismatch => "avro_schema_mismatch",
        /// The datum ends early or does not decode with its schema.
        AvroTruncated => "avro_truncated",
        /// Bytes follow the datum.
        AvroTrailingBytes => "avro_trailing_bytes",
        /// A value with no JSON form (a timestamp out of range).
        AvroBadValue => "avro_bad_value",
        Other => "other",
    }
);

label_enum!(
    /// How a delivery ended (`webhooks_deliveries_total{result}`).
    DeliveryResult {
        Delivered => "delivered",
        Failed => "failed",
        Dropped => "dropped",
    }
);

label_enum!(
    /// How a produce error was handled (`webhooks_produce_errors_total{kind}`), as
    /// [`crate::kafka::produce`] classifies it.
    ProduceErrorKind {
        /// Tried again until the broker took the record.
        Retriable => "retriable",
        /// The record can never be written: passed over.
        Permanent => "permanent",
        /// The producer itself failed: the process stops.
        Fatal => "fatal",
    }
);

label_enum!(
    /// What was wrong with a record of a retry or replay topic
    /// (`webhooks_task_record_problems_total{problem}`).
    TaskRecordProblem {
        /// Not a delivery task (not JSON of the task's shape, or no value): skipped.
        Undecodable => "undecodable",
        /// Due later than its topic can ask for: attempted at the latest due time its topic allows.
        DueTooLate => "due_too_late",
        /// An attempt number outside 1..=4: clamped into the schedule.
        BadAttempt => "bad_attempt",
    }
);

label_enum!(
    /// What a subscription record did to the table.
    SubscriptionOutcome {
        Put => "put",
        Delete => "delete",
        Invalid => "invalid",
    }
);

label_enum!(
    /// Why a subscription record was invalid: the codes of
    /// [`crate::subscriptions::InvalidSubscription`].
    InvalidSubscriptionReason {
        MissingKey => "missing_key",
        BadKey => "bad_key",
        KeyMismatch => "key_mismatch",
        BadJson => "bad_json",
        BadId => "bad_id",
        BadUrl => "bad_url",
        BadEventTypes => "bad_event_types",
        BadClientId => "bad_client_id",
        EmptySecret => "empty_secret",
        Other => "other",
    }
);

/// `code` as a value of a label enum, or its `Other`.
fn from_code<T: Copy + 'static>(
    all: &'static [T],
    as_str: fn(T) -> &'static str,
    code: &str,
    other: T,
) -> T {
    all.iter()
        .copied()
        .find(|v| as_str(*v) == code)
        .unwrap_or(other)
}

/// How one attempt ended (`webhooks_attempts_total{outcome}`): an HTTP [`Outcome`], or the end
/// of a delivery that was not sent (its subscription is gone or suspended, or its body cannot be
/// rebuilt from its source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    Http(Outcome),
    SubscriptionDeleted,
    SubscriptionDisabled,
    /// The subscription's latest record is invalid: suspended.
    SubscriptionInvalid,
    /// The subscription no longer matches the event (event types or client narrowed).
    SubscriptionMismatch,
    /// The body, kept by reference, cannot be read back from the events topic.
    SourceUnavailable,
}

/// The outcomes that end a delivery without sending it, after the HTTP ones in [`AttemptOutcome::ALL`].
const NOT_SENT: [AttemptOutcome; 5] = [
    AttemptOutcome::SubscriptionDeleted,
    AttemptOutcome::SubscriptionDisabled,
    AttemptOutcome::SubscriptionInvalid,
    AttemptOutcome::SubscriptionMismatch,
    AttemptOutcome::SourceUnavailable,
];

const ATTEMPT_OUTCOMES: usize = Outcome::ALL.len() + NOT_SENT.len();

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; ATTEMPT_OUTCOMES] = {
        let mut all = [AttemptOutcome::SubscriptionDeleted; ATTEMPT_OUTCOMES];
        let mut i = 0;
        while i < Outcome::ALL.len() {
            all[i] = AttemptOutcome::Http(Outcome::ALL[i]);
            i += 1;
        }
        let mut j = 0;
        while j < NOT_SENT.len() {
            all[Outcome::ALL.len() + j] = NOT_SENT[j];
            j += 1;
        }
        all
    };

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Http(o) => o.as_str(),
            AttemptOutcome::SubscriptionDeleted => "subscription_deleted",
            AttemptOutcome::SubscriptionDisabled => "subscription_disabled",
            AttemptOutcome::SubscriptionInvalid => "subscription_invalid",
            AttemptOutcome::SubscriptionMismatch => "subscription_mismatch",
            AttemptOutcome::SourceUnavailable => "source_unavailable",
        }
    }

    /// The unsent outcome whose delivery-log value is `code` (`subscription_deleted`, …).
    pub fn not_sent(code: &str) -> AttemptOutcome {
        match NOT_SENT.iter().find(|o| o.as_str() == code) {
            Some(o) => *o,
            None => {
                debug_assert!(false, "{code:?} is missing from NOT_SENT");
                AttemptOutcome::SubscriptionDeleted
            }
        }
    }

    fn index(self) -> usize {
        match self {
            AttemptOutcome::Http(o) => match Outcome::ALL.iter().position(|x| *x == o) {
                Some(i) => i,
                None => {
                    // An outcome missing from `Outcome::ALL` has no series of its own: tests
                    // fail here; a release build counts it as the catch-all `request_error`.
                    debug_assert!(false, "{o:?} is missing from Outcome::ALL");
                    AttemptOutcome::Http(Outcome::RequestError).index()
                }
            },
            not_sent => {
                Outcome::ALL.len()
                    + NOT_SENT
                        .iter()
                        .position(|x| *x == not_sent)
                        .expect("NOT_SENT lists every other outcome")
            }
        }
    }
}

/// Where a task consumer reads: a retry tier or the replay topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSource {
    Tier(Tier),
    Replay,
}

/// The timestamp of the event a webhook body was built from, in Unix milliseconds. The body
/// builder ([`crate::body::build_body`]) writes `"timestamp"` as the last member, normalised to
/// RFC 3339 UTC, so it is found from the end in a few bytes.
pub fn event_timestamp_ms(body: &str) -> Option<i64> {
    const KEY: &str = ",\"timestamp\":\"";
    let start = body.rfind(KEY)? + KEY.len();
    let rest = &body[start..];
    let end = rest.find('"')?;
    chrono::DateTime::parse_from_rfc3339(&rest[..end])
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The consumer-lag series of one consumer: sets the lag of the partitions it reports and
/// removes the series of partitions it no longer has.
pub struct ConsumerLag {
    gauge: IntGaugeVec,
    current: Mutex<BTreeSet<(String, i32)>>,
}

impl ConsumerLag {
    /// `lags` holds (topic, partition, lag in messages) of every partition assigned now.
    pub fn update(&self, lags: &[(String, i32, i64)]) {
        let now: BTreeSet<(String, i32)> = lags.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let mut current = self.current.lock().expect("consumer lag lock poisoned");
        for (topic, partition) in current.difference(&now) {
            let _ = self
                .gauge
                .remove_label_values(&[topic, &partition.to_string()]);
        }
        for (topic, partition, lag) in lags {
            self.gauge
                .with_label_values(&[topic, &partition.to_string()])
                .set(*lag);
        }
        *current = now;
    }
}

impl Drop for ConsumerLag {
    fn drop(&mut self) {
        self.update(&[]);
    }
}

/// One Kafka client's request counters and batch sizes, fed from its librdkafka statistics
/// (which count per broker connection since the client started).
pub struct KafkaClientStats {
    client: String,
    requests: IntCounterVec,
    batch_records: GaugeVec,
    /// The last cumulative count per (broker, request type).
    last: Mutex<HashMap<(String, String), i64>>,
}

impl KafkaClientStats {
    /// `requests`: (broker, request type, cumulative count); `batches`: (topic, average
    /// records per batch in the last interval, batches in it).
    pub fn update(&self, requests: &[(String, String, i64)], batches: &[(String, f64, i64)]) {
        let mut last = self.last.lock().expect("kafka client stats lock poisoned");
        for (broker, request, count) in requests {
            let key = (broker.clone(), request.clone());
            // A broker connection that is gone and back starts from 0 again.
            let before = last.get(&key).copied().unwrap_or(0);
            if *count > before {
                self.requests
                    .with_label_values(&[self.client.as_str(), request.as_str()])
                    .inc_by((count - before) as u64);
            }
            last.insert(key, *count);
        }
        for (topic, avg, batches) in batches {
            if *batches > 0 {
                self.batch_records.with_label_values(&[topic]).set(*avg);
            }
        }
    }
}

/// Handles resolved at start, indexed by the label enums.
struct Handles {
    events: Vec<IntCounter>,
    invalid_events: Vec<IntCounter>,
    /// `[outcome][event_type]`, flattened.
    attempts: Vec<IntCounter>,
    /// `[result][event_type]`, flattened.
    deliveries: Vec<IntCounter>,
    failed: Vec<IntCounter>,
    retries: Vec<IntCounter>,
    lateness: Vec<Histogram>,
    produce_errors: Vec<IntCounter>,
    task_record_problems: Vec<IntCounter>,
    subscription_records: Vec<IntCounter>,
    subscription_invalid: Vec<IntCounter>,
}

pub struct Metrics {
    registry: Registry,
    /// `webhooks_events_total{outcome}`: event records consumed, by [`EventOutcome`].
    pub events: IntCounterVec,
    /// `webhooks_invalid_events_total{reason}`: undecodable event records sent to the invalid
    /// topic, by [`InvalidEventReason`].
    pub invalid_events: IntCounterVec,
    /// `webhooks_matches_total`: (event, subscription) pairs matched.
    pub matches: IntCounter,
    /// `webhooks_inexact_numbers_total`: numbers JavaScript cannot represent exactly.
    pub inexact_numbers: IntCounter,
    /// `webhooks_attempts_total{outcome, event_type}`.
    pub attempts: IntCounterVec,
    /// `webhooks_deliveries_total{result, event_type}`: deliveries that ended.
    pub deliveries: IntCounterVec,
    /// `webhooks_failed_deliveries_total{outcome}`: deliveries written to the failed topic, by
    /// the outcome of their last attempt.
    pub failed: IntCounterVec,
    /// `webhooks_attempt_duration_seconds`: duration of one HTTP attempt.
    pub attempt_seconds: Histogram,
    /// `webhooks_delivery_latency_seconds`: event timestamp to the 2xx response.
    pub delivery_latency_seconds: Histogram,
    /// `webhooks_in_flight`: HTTP attempts in flight.
    pub in_flight: IntGauge,
    /// `webhooks_pending_deliveries`: deliveries of matched events not finished yet (bounded
    /// by `delivery.max_pending_deliveries`).
    pub pending_deliveries: IntGauge,
    /// `webhooks_slow_in_flight`: attempts in flight to endpoints marked slow (bounded by
    /// `delivery.slow_share_percent` of `delivery.max_in_flight`).
    pub slow_in_flight: IntGauge,
    /// `webhooks_slow_abandoned_total`: attempts given up after `delivery.slow_request_ms`
    /// because slow endpoints already held their whole share.
    pub slow_abandoned: IntCounter,
    /// `webhooks_endpoints_tracked`: endpoints (URL origins) with concurrency state in memory;
    /// idle ones are forgotten.
    pub endpoints_tracked: IntGauge,
    /// `webhooks_retries_scheduled_total{tier}`.
    pub retries_scheduled: IntCounterVec,
    /// `webhooks_retry_lateness_seconds{tier}`: start of a retry minus its due time.
    pub retry_lateness_seconds: HistogramVec,
    /// `webhooks_replayed_total`: tasks taken from the replay topic.
    pub replayed: IntCounter,
    /// `webhooks_endpoints_stalled`: endpoints whose last attempt was refused as stalled.
    pub endpoints_stalled: IntGauge,
    /// `webhooks_produce_errors_total{kind}`: output records Kafka refused, by how the error was
    /// handled ([`ProduceErrorKind`]).
    pub produce_errors: IntCounterVec,
    /// `webhooks_task_record_problems_total{problem}`: retry and replay records that were
    /// unusable (skipped) or clamped, by [`TaskRecordProblem`].
    pub task_record_problems: IntCounterVec,
    /// `webhooks_subscription_records_total{outcome}`.
    pub subscription_records: IntCounterVec,
    /// `webhooks_subscription_invalid_records_total{reason}`.
    pub subscription_invalid: IntCounterVec,
    /// `webhooks_subscriptions`: subscriptions in the table.
    pub subscriptions: IntGauge,
    /// `webhooks_subscriptions_invalid`: subscriptions whose latest record is invalid
    /// (suspended: not delivered to).
    pub subscriptions_invalid: IntGauge,
    /// `webhooks_subscriptions_loaded`: 1 once the table has loaded.
    pub subscriptions_loaded: IntGauge,
    /// `webhooks_subscription_load_seconds`: how long the initial load took.
    pub subscription_load_seconds: Gauge,
    /// `webhooks_consumer_lag{topic, partition}`: messages behind the committed offset.
    pub consumer_lag: IntGaugeVec,
    /// `webhooks_kafka_requests_total{client, request}`: requests our Kafka clients sent to the
    /// brokers, by request type (librdkafka statistics).
    pub kafka_requests: IntCounterVec,
    /// `webhooks_kafka_produce_batch_records{topic}`: records per batch produced (or, for a
    /// consumed topic, fetched), averaged over the last statistics interval.
    pub kafka_batch_records: GaugeVec,
    /// `webhooks_ready`: 1 while `/readyz` answers 200.
    pub ready: IntGauge,
    /// `webhooks_registry_unavailable_total`: schema-registry lookups that found it unavailable
    /// (connection error, timeout, 5xx, …); each retry of a waiting record counts.
    pub registry_unavailable: IntCounter,
    /// `webhooks_registry_waiting_records`: records waiting now for the schema registry.
    pub registry_waiting: IntGauge,
    h: Handles,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
    registry
        .register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("valid metric"),
            )
        };

        let events = counter_vec(
            "webhooks_events_total",
            "Rewards event records consumed, by outcome",
            &["outcome"],
        );
        let invalid_events = counter_vec(
            "webhooks_invalid_events_total",
            "Undecodable event records sent to the invalid topic, by reason",
            &["reason"],
        );
        let attempts = counter_vec(
            "webhooks_attempts_total",
            "Delivery attempts, by outcome and event type",
            &["outcome", "event_type"],
        );
        let deliveries = counter_vec(
            "webhooks_deliveries_total",
            "Deliveries that ended, by result and event type",
            &["result", "event_type"],
        );
        let failed = counter_vec(
            "webhooks_failed_deliveries_total",
            "Deliveries written to the failed topic, by the outcome of their last attempt",
            &["outcome"],
        );
        let retries_scheduled = counter_vec(
            "webhooks_retries_scheduled_total",
            "Delivery tasks produced to a retry topic, by tier",
            &["tier"],
        );
        let retry_lateness_seconds = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "webhooks_retry_lateness_seconds",
                    "Start of a retry attempt minus its due time, by tier",
                )
                .buckets(LATENESS_BUCKETS.to_vec()),
                &["tier"],
            )
            .expect("valid metric"),
        );
        let produce_errors = counter_vec(
            "webhooks_produce_errors_total",
            "Output records Kafka refused, by how the error was handled",
            &["kind"],
        );
        let task_record_problems = counter_vec(
            "webhooks_task_record_problems_total",
            "Retry and replay records that were unusable (skipped) or clamped, by problem",
            &["problem"],
        );
        let subscription_records = counter_vec(
            "webhooks_subscription_records_total",
            "Subscription records applied, by outcome",
            &["outcome"],
        );
        let subscription_invalid = counter_vec(
            "webhooks_subscription_invalid_records_total",
            "Invalid subscription records ignored, by reason",
            &["reason"],
        );
        let subscription_load_seconds = register(
            &r,
            Gauge::new(
                "webhooks_subscription_load_seconds",
                "Seconds the initial subscription table load took",
            )
            .expect("valid metric"),
        );
        let consumer_lag = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "webhooks_consumer_lag",
                    "Messages between a partition's high watermark and the group's committed \
                     offset, per assigned partition (librdkafka statistics)",
                ),
                &["topic", "partition"],
            )
            .expect("valid metric"),
        );
        let kafka_requests = counter_vec(
            "webhooks_kafka_requests_total",
            "Requests this process's Kafka clients sent to the brokers, by client and request \
             type (Produce, Fetch, OffsetCommit, ...; librdkafka statistics, every 5 s)",
            &["client", "request"],
        );
        let kafka_batch_records = register(
            &r,
            GaugeVec::new(
                Opts::new(
                    "webhooks_kafka_produce_batch_records",
                    "Records per record batch, per topic, averaged over the last statistics \
                     interval: batches our producers sent, or for a topic we consume, the \
                     batches we fetched (librdkafka statistics)",
                ),
                &["topic"],
            )
            .expect("valid metric"),
        );

        let resolve = |vec: &IntCounterVec, values: &mut dyn Iterator<Item = &'static str>| {
            values.map(|v| vec.with_label_values(&[v])).collect()
        };
        let grid = |vec: &IntCounterVec, rows: &[&'static str]| {
            rows.iter()
                .flat_map(|row| event_type_labels().map(move |et| (*row, et)))
                .map(|(row, et)| vec.with_label_values(&[row, et]))
                .collect()
        };
        let attempt_labels: Vec<&'static str> =
            AttemptOutcome::ALL.iter().map(|o| o.as_str()).collect();
        let result_labels: Vec<&'static str> =
            DeliveryResult::ALL.iter().map(|o| o.as_str()).collect();
        let h = Handles {
            events: resolve(&events, &mut EventOutcome::ALL.iter().map(|v| v.as_str())),
            invalid_events: resolve(
                &invalid_events,
                &mut InvalidEventReason::ALL.iter().map(|v| v.as_str()),
            ),
            attempts: grid(&attempts, &attempt_labels),
            deliveries: grid(&deliveries, &result_labels),
            failed: resolve(&failed, &mut attempt_labels.iter().copied()),
            retries: resolve(
                &retries_scheduled,
                &mut Tier::ALL.iter().map(|t| t.as_str()),
            ),
            lateness: Tier::ALL
                .iter()
                .map(|t| retry_lateness_seconds.with_label_values(&[t.as_str()]))
                .collect(),
            produce_errors: resolve(
                &produce_errors,
                &mut ProduceErrorKind::ALL.iter().map(|v| v.as_str()),
            ),
            task_record_problems: resolve(
                &task_record_problems,
                &mut TaskRecordProblem::ALL.iter().map(|v| v.as_str()),
            ),
            subscription_records: resolve(
                &subscription_records,
                &mut SubscriptionOutcome::ALL.iter().map(|v| v.as_str()),
            ),
            subscription_invalid: resolve(
                &subscription_invalid,
                &mut InvalidSubscriptionReason::ALL.iter().map(|v| v.as_str()),
            ),
        };
        Metrics {
            events,
            invalid_events,
            matches: counter(
                "webhooks_matches_total",
                "(event, subscription) pairs matched",
            ),
            inexact_numbers: counter(
                "webhooks_inexact_numbers_total",
                "Numbers JavaScript cannot represent exactly, sent as their nearest double",
            ),
            attempts,
            deliveries,
            failed,
            attempt_seconds: histogram(
                "webhooks_attempt_duration_seconds",
                "Duration of one HTTP delivery attempt",
                &ATTEMPT_BUCKETS,
            ),
            delivery_latency_seconds: histogram(
                "webhooks_delivery_latency_seconds",
                "From the event's timestamp to the 2xx response of its delivery",
                &LATENCY_BUCKETS,
            ),
            in_flight: gauge("webhooks_in_flight", "HTTP delivery attempts in flight"),
            pending_deliveries: gauge(
                "webhooks_pending_deliveries",
                "Deliveries of matched events not finished yet (delivery.max_pending_deliveries)",
            ),
            slow_in_flight: gauge(
                "webhooks_slow_in_flight",
                "Delivery attempts in flight to endpoints marked slow",
            ),
            slow_abandoned: counter(
                "webhooks_slow_abandoned_total",
                "Attempts given up after delivery.slow_request_ms: slow endpoints held their share",
            ),
            endpoints_tracked: gauge(
                "webhooks_endpoints_tracked",
                "Endpoints (URL origins) with concurrency state in memory",
            ),
            retries_scheduled,
            retry_lateness_seconds,
            replayed: counter(
                "webhooks_replayed_total",
                "Delivery tasks taken from the replay topic",
            ),
            endpoints_stalled: gauge(
                "webhooks_endpoints_stalled",
                "Endpoints whose last attempt was refused because every connection was stalled",
            ),
            produce_errors,
            task_record_problems,
            subscription_records,
            subscription_invalid,
            subscriptions: gauge("webhooks_subscriptions", "Subscriptions in the table"),
            subscriptions_invalid: gauge(
                "webhooks_subscriptions_invalid",
                "Subscriptions whose latest record is invalid (suspended, not delivered to)",
            ),
            subscriptions_loaded: gauge(
                "webhooks_subscriptions_loaded",
                "1 once the subscription table is fully loaded",
            ),
            subscription_load_seconds,
            consumer_lag,
            kafka_requests,
            kafka_batch_records,
            ready: gauge(
                "webhooks_ready",
                "1 while the processor is ready (/readyz 200)",
            ),
            registry_unavailable: counter(
                "webhooks_registry_unavailable_total",
                "Schema registry lookups that found it unavailable (each retry counts)",
            ),
            registry_waiting: gauge(
                "webhooks_registry_waiting_records",
                "Records waiting for the schema registry to answer",
            ),
            h,
            registry: r,
        }
    }

    /// An event record was consumed and matched (or not).
    pub fn event(&self, outcome: EventOutcome) {
        self.h.events[outcome.index()].inc();
    }

    /// An event record was undecodable (`code` from [`crate::events::InvalidEvent`]).
    pub fn invalid_event(&self, code: &str) {
        self.event(EventOutcome::Invalid);
        let reason = from_code(
            InvalidEventReason::ALL,
            InvalidEventReason::as_str,
            code,
            InvalidEventReason::Other,
        );
        self.h.invalid_events[reason.index()].inc();
    }

    /// One attempt of a delivery of `event_type` ended with `outcome`.
    pub fn attempt(&self, outcome: AttemptOutcome, event_type: &str) {
        self.h.attempts[outcome.index() * EVENT_TYPES + event_type_index(event_type)].inc();
    }

    /// Attempts that ended with `outcome` so far, over every event type (for tests and tools).
    pub fn attempts_total(&self, outcome: AttemptOutcome) -> u64 {
        let start = outcome.index() * EVENT_TYPES;
        self.h.attempts[start..start + EVENT_TYPES]
            .iter()
            .map(IntCounter::get)
            .sum()
    }

    /// The duration of one HTTP attempt.
    pub fn attempt_duration(&self, duration: Duration) {
        self.attempt_seconds.observe(duration.as_secs_f64());
    }

    /// A delivery succeeded at `now_ms`; its end-to-end latency is measured from the timestamp
    /// of the event in `body` (a body without one, or a clock behind it, counts as 0).
    pub fn delivered(&self, event_type: &str, body: &str, now_ms: i64) {
        self.delivery_end(DeliveryResult::Delivered, event_type);
        if let Some(at) = event_timestamp_ms(body) {
            let seconds = (now_ms - at).max(0) as f64 / 1000.0;
            self.delivery_latency_seconds.observe(seconds);
        }
    }

    /// A delivery spent its attempts and went to the failed topic; `last` ended its last attempt.
    pub fn failed(&self, event_type: &str, last: AttemptOutcome) {
        self.delivery_end(DeliveryResult::Failed, event_type);
        self.h.failed[last.index()].inc();
    }

    /// A delivery ended unsent (`why` is one of the outcomes that are not HTTP outcomes).
    pub fn dropped(&self, why: AttemptOutcome, event_type: &str) {
        self.attempt(why, event_type);
        self.delivery_end(DeliveryResult::Dropped, event_type);
    }

    fn delivery_end(&self, result: DeliveryResult, event_type: &str) {
        self.h.deliveries[result.index() * EVENT_TYPES + event_type_index(event_type)].inc();
    }

    /// A retry was produced to `tier`.
    pub fn retry_scheduled(&self, tier: Tier) {
        self.h.retries[tier_index(tier)].inc();
    }

    /// A task consumer started the attempt of a task due at `due_ms`, at `now_ms`.
    pub fn task_started(&self, source: TaskSource, due_ms: i64, now_ms: i64) {
        match source {
            TaskSource::Tier(tier) => {
                let late = (now_ms - due_ms).max(0) as f64 / 1000.0;
                self.h.lateness[tier_index(tier)].observe(late);
            }
            TaskSource::Replay => self.replayed.inc(),
        }
    }

    /// An endpoint became stalled (`true`) or recovered (`false`).
    pub fn endpoint_stalled(&self, stalled: bool) {
        if stalled {
            self.endpoints_stalled.inc();
        } else {
            self.endpoints_stalled.dec();
        }
    }

    /// Kafka refused an output record; `kind` says how that was handled.
    pub fn produce_error(&self, kind: ProduceErrorKind) {
        self.h.produce_errors[kind.index()].inc();
    }

    /// A record of a retry or replay topic was unusable or clamped.
    pub fn task_record_problem(&self, problem: TaskRecordProblem) {
        self.h.task_record_problems[problem.index()].inc();
    }

    /// A valid subscription record was applied.
    pub fn subscription_record(&self, outcome: SubscriptionOutcome) {
        self.h.subscription_records[outcome.index()].inc();
    }

    /// An invalid subscription record was ignored (`code` from
    /// [`crate::subscriptions::InvalidSubscription`]).
    pub fn invalid_subscription(&self, code: &str) {
        self.subscription_record(SubscriptionOutcome::Invalid);
        let reason = from_code(
            InvalidSubscriptionReason::ALL,
            InvalidSubscriptionReason::as_str,
            code,
            InvalidSubscriptionReason::Other,
        );
        self.h.subscription_invalid[reason.index()].inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The consumer-lag series of one consumer (each consumer reads topics of its own).
    /// Where the statistics of the Kafka client `client` report its requests and batches.
    pub fn kafka_client(&self, client: &str) -> KafkaClientStats {
        KafkaClientStats {
            client: client.to_string(),
            requests: self.kafka_requests.clone(),
            batch_records: self.kafka_batch_records.clone(),
            last: Mutex::new(HashMap::new()),
        }
    }

    pub fn consumer_lag(&self) -> ConsumerLag {
        ConsumerLag {
            gauge: self.consumer_lag.clone(),
            current: Mutex::new(BTreeSet::new()),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

fn tier_index(tier: Tier) -> usize {
    Tier::ALL
        .iter()
        .position(|t| *t == tier)
        .expect("Tier::ALL lists every tier")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` (labels exactly as rendered), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn renders_names_with_base_units_and_total_suffix() {
        let m = Metrics::new();
        m.event(EventOutcome::Matched);
        m.attempt_duration(Duration::from_millis(10));
        let text = m.render();
        assert_eq!(
            sample(&text, "webhooks_events_total{outcome=\"matched\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(
            text.contains("webhooks_attempt_duration_seconds_bucket"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let parts: Vec<&str> = line.split(' ').collect();
            let (name, kind) = (parts[2], parts[3]);
            assert!(name.starts_with("webhooks_"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
    }

    #[test]
    fn every_labelled_series_exists_at_start_with_zero() {
        let text = Metrics::new().render();
        let mut expected = Vec::new();
        for o in EventOutcome::ALL {
            expected.push(format!(
                "webhooks_events_total{{outcome=\"{}\"}}",
                o.as_str()
            ));
        }
        for r in InvalidEventReason::ALL {
            expected.push(format!(
                "webhooks_invalid_events_total{{reason=\"{}\"}}",
                r.as_str()
            ));
        }
        for et in event_type_labels() {
            for o in AttemptOutcome::ALL {
                expected.push(format!(
                    "webhooks_attempts_total{{event_type=\"{et}\",outcome=\"{}\"}}",
                    o.as_str()
                ));
            }
            for r in DeliveryResult::ALL {
                expected.push(format!(
                    "webhooks_deliveries_total{{event_type=\"{et}\",result=\"{}\"}}",
                    r.as_str()
                ));
            }
        }
        for o in AttemptOutcome::ALL {
            expected.push(format!(
                "webhooks_failed_deliveries_total{{outcome=\"{}\"}}",
                o.as_str()
            ));
        }
        for t in Tier::ALL {
            expected.push(format!(
                "webhooks_retries_scheduled_total{{tier=\"{}\"}}",
                t.as_str()
            ));
            expected.push(format!(
                "webhooks_retry_lateness_seconds_count{{tier=\"{}\"}}",
                t.as_str()
            ));
        }
        for k in ProduceErrorKind::ALL {
            expected.push(format!(
                "webhooks_produce_errors_total{{kind=\"{}\"}}",
                k.as_str()
            ));
        }
        for p in TaskRecordProblem::ALL {
            expected.push(format!(
                "webhooks_task_record_problems_total{{problem=\"{}\"}}",
                p.as_str()
            ));
        }
        for o in SubscriptionOutcome::ALL {
            expected.push(format!(
                "webhooks_subscription_records_total{{outcome=\"{}\"}}",
                o.as_str()
            ));
        }
        for r in InvalidSubscriptionReason::ALL {
            expected.push(format!(
                "webhooks_subscription_invalid_records_total{{reason=\"{}\"}}",
                r.as_str()
            ));
        }
        for name in [
            "webhooks_matches_total",
            "webhooks_inexact_numbers_total",
            "webhooks_attempt_duration_seconds_count",
            "webhooks_delivery_latency_seconds_count",
            "webhooks_in_flight",
            "webhooks_pending_deliveries",
            "webhooks_slow_in_flight",
            "webhooks_slow_abandoned_total",
            "webhooks_endpoints_tracked",
            "webhooks_replayed_total",
            "webhooks_endpoints_stalled",
            "webhooks_subscriptions",
            "webhooks_subscriptions_invalid",
            "webhooks_subscriptions_loaded",
            "webhooks_subscription_load_seconds",
            "webhooks_ready",
        ] {
            expected.push(name.to_string());
        }
        for series in &expected {
            assert_eq!(
                sample(&text, series),
                Some(0.0),
                "{series} missing:\n{text}"
            );
        }
        // 11 known event types + other, 8 HTTP outcomes (or more) + 5.
        assert!(expected.len() > 12 * 10, "{}", expected.len());
    }

    #[test]
    fn counters_move_on_their_events_only() {
        let m = Metrics::new();
        m.attempt(
            AttemptOutcome::Http(Outcome::HttpError),
            "rewards.points_awarded",
        );
        m.attempt(AttemptOutcome::SubscriptionDisabled, "custom.thing");
        m.failed("custom.thing", AttemptOutcome::Http(Outcome::Timeout));
        m.dropped(AttemptOutcome::SubscriptionDeleted, "rewards.redeemed");
        m.retry_scheduled(Tier::FiveSeconds);
        m.invalid_event("bad_json");
        m.invalid_event("some_new_code");
        m.invalid_subscription("bad_url");
        m.subscription_record(SubscriptionOutcome::Put);
        m.task_record_problem(TaskRecordProblem::DueTooLate);
        m.task_started(TaskSource::Tier(Tier::OneSecond), 1_000, 3_500);
        m.task_started(TaskSource::Replay, 0, 10);
        m.endpoint_stalled(true);
        m.endpoint_stalled(true);
        m.endpoint_stalled(false);
        m.set_ready(true);
        m.produce_error(ProduceErrorKind::Permanent);
        let body = crate::body::build_body(
            "rewards.points_awarded",
            &serde_json::Map::new(),
            "2025-01-15T10:30:00.000Z",
        );
        let at = event_timestamp_ms(std::str::from_utf8(&body).unwrap()).unwrap();
        m.delivered(
            "rewards.points_awarded",
            std::str::from_utf8(&body).unwrap(),
            at + 1_500,
        );
        let text = m.render();
        let check = |series: &str, value: f64| {
            assert_eq!(sample(&text, series), Some(value), "{series}:\n{text}");
        };
        check(
            "webhooks_attempts_total{event_type=\"rewards.points_awarded\",outcome=\"http_error\"}",
            1.0,
        );
        check(
            "webhooks_attempts_total{event_type=\"rewards.points_awarded\",outcome=\"success\"}",
            0.0,
        );
        check(
            "webhooks_attempts_total{event_type=\"other\",outcome=\"subscription_disabled\"}",
            1.0,
        );
        check(
            "webhooks_deliveries_total{event_type=\"other\",result=\"failed\"}",
            1.0,
        );
        check("webhooks_failed_deliveries_total{outcome=\"timeout\"}", 1.0);
        check(
            "webhooks_deliveries_total{event_type=\"rewards.redeemed\",result=\"dropped\"}",
            1.0,
        );
        check(
            "webhooks_attempts_total{event_type=\"rewards.redeemed\",outcome=\"subscription_deleted\"}",
            1.0,
        );
        check(
            "webhooks_deliveries_total{event_type=\"rewards.points_awarded\",result=\"delivered\"}",
            1.0,
        );
        check("webhooks_delivery_latency_seconds_sum", 1.5);
        check("webhooks_delivery_latency_seconds_bucket{le=\"1\"}", 0.0);
        check("webhooks_delivery_latency_seconds_bucket{le=\"2.5\"}", 1.0);
        check("webhooks_retries_scheduled_total{tier=\"5s\"}", 1.0);
        check("webhooks_retries_scheduled_total{tier=\"1s\"}", 0.0);
        check("webhooks_events_total{outcome=\"invalid\"}", 2.0);
        check("webhooks_invalid_events_total{reason=\"bad_json\"}", 1.0);
        check("webhooks_invalid_events_total{reason=\"other\"}", 1.0);
        check(
            "webhooks_subscription_records_total{outcome=\"invalid\"}",
            1.0,
        );
        check("webhooks_subscription_records_total{outcome=\"put\"}", 1.0);
        check(
            "webhooks_subscription_invalid_records_total{reason=\"bad_url\"}",
            1.0,
        );
        check(
            "webhooks_task_record_problems_total{problem=\"due_too_late\"}",
            1.0,
        );
        check(
            "webhooks_task_record_problems_total{problem=\"undecodable\"}",
            0.0,
        );
        check("webhooks_retry_lateness_seconds_sum{tier=\"1s\"}", 2.5);
        check("webhooks_retry_lateness_seconds_count{tier=\"5s\"}", 0.0);
        check("webhooks_replayed_total", 1.0);
        assert_eq!(
            m.attempts_total(AttemptOutcome::Http(Outcome::HttpError)),
            1
        );
        assert_eq!(m.attempts_total(AttemptOutcome::Http(Outcome::Success)), 0);
        check("webhooks_endpoints_stalled", 1.0);
        check("webhooks_ready", 1.0);
        check("webhooks_produce_errors_total{kind=\"permanent\"}", 1.0);
        check("webhooks_produce_errors_total{kind=\"retriable\"}", 0.0);
    }

    #[test]
    fn consumer_lag_follows_the_assignment() {
        let m = Metrics::new();
        let lag = m.consumer_lag();
        lag.update(&[("ev".into(), 0, 5), ("ev".into(), 1, 7)]);
        let text = m.render();
        assert_eq!(
            sample(&text, "webhooks_consumer_lag{partition=\"1\",topic=\"ev\"}"),
            Some(7.0),
            "{text}"
        );
        lag.update(&[("ev".into(), 0, 2)]);
        let text = m.render();
        assert_eq!(
            sample(&text, "webhooks_consumer_lag{partition=\"0\",topic=\"ev\"}"),
            Some(2.0)
        );
        assert!(
            !text.contains("partition=\"1\""),
            "revoked partition dropped:\n{text}"
        );
        drop(lag);
        assert!(!m.render().contains("webhooks_consumer_lag{"));
    }

    #[test]
    fn label_values_are_bounded() {
        for (event_type, label) in [
            ("rewards.points_awarded", "rewards.points_awarded"),
            ("cashback.rejected", "cashback.rejected"),
            ("partner.custom_thing", "other"),
            ("", "other"),
        ] {
            assert_eq!(event_type_label(event_type), label);
        }
        // Every reason code the decoders produce has a label of its own.
        let mut codes = Vec::new();
        for value in [
            &br#"{"event_type":"a","event_type":"b","data":{},"timestamp":"2025-01-01T00:00:00Z"}"#[..],
            &b""[..],
            b"\0avro",
            b"[1]",
            b"{",
            b"{\"event_type\":1,\"data\":{},\"timestamp\":\"2025-01-01T00:00:00Z\"}",
            b"{\"data\":{},\"timestamp\":\"2025-01-01T00:00:00Z\"}",
            b"{\"event_type\":\"a\",\"data\":1,\"timestamp\":\"2025-01-01T00:00:00Z\"}",
            b"{\"event_type\":\"a\",\"data\":{},\"timestamp\":\"yesterday\"}",
            b"{\"event_type\":\"a\",\"data\":{},\"timestamp\":\"2025-01-01T00:00:00Z\",\"client_id\":1}",
        ] {
            let code = crate::events::RewardsEvent::decode(Some(value)).unwrap_err().code;
            codes.push(code);
        }
        codes.push(crate::events::InvalidEvent::too_large(10, 5).code);
        for code in codes {
            let reason = from_code(
                InvalidEventReason::ALL,
                InvalidEventReason::as_str,
                code,
                InvalidEventReason::Other,
            );
            assert_ne!(reason, InvalidEventReason::Other, "{code}");
        }
        let sub = |id: &str, url: &str, types: &str, secret: &str| {
            format!(r#"{{"id":"{id}","url":"{url}","event_types":{types},"secret":"{secret}"}}"#)
        };
        let ok = "https://p.example/h";
        for (key, value) in [
            (None, sub("a", ok, r#"["*"]"#, "s")),
            (Some(&b"\xff"[..]), sub("a", ok, r#"["*"]"#, "s")),
            (Some(b"b"), sub("a", ok, r#"["*"]"#, "s")),
            (Some(b"a"), "not json".to_string()),
            (Some(b"a b"), sub("a b", ok, r#"["*"]"#, "s")),
            (Some(b"a"), sub("a", "not a url", r#"["*"]"#, "s")),
            (Some(b"a"), sub("a", ok, "[]", "s")),
            (Some(b"a"), sub("a", ok, r#"["*"]"#, "")),
            (
                Some(b"a"),
                r#"{"id":"a","url":"https://p.example/h","event_types":["*"],"secret":"s","client_id":""}"#.to_string(),
            ),
        ] {
            let code = crate::subscriptions::decode_record(key, Some(value.as_bytes()))
                .err()
                .unwrap_or_else(|| panic!("{value} is invalid"))
                .code;
            let reason = from_code(
                InvalidSubscriptionReason::ALL,
                InvalidSubscriptionReason::as_str,
                code,
                InvalidSubscriptionReason::Other,
            );
            assert_ne!(reason, InvalidSubscriptionReason::Other, "{code}");
        }
        for code in [
            "subscription_deleted",
            "subscription_disabled",
            "subscription_invalid",
            "subscription_mismatch",
            "source_unavailable",
        ] {
            assert_eq!(AttemptOutcome::not_sent(code).as_str(), code);
        }
        assert_eq!(
            AttemptOutcome::ALL
                .iter()
                .map(|o| o.index())
                .collect::<Vec<_>>(),
            (0..ATTEMPT_OUTCOMES).collect::<Vec<_>>()
        );
    }

    #[test]
    fn event_timestamps_are_read_from_the_body_tail() {
        let data: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"timestamp":"not this","x":",\"timestamp\":\"no\""}"#)
                .unwrap();
        let body = crate::body::build_body("a", &data, "2025-01-15T10:30:00.123Z");
        let body = String::from_utf8(body).unwrap();
        assert_eq!(event_timestamp_ms(&body), Some(1_736_937_000_123));
        assert_eq!(event_timestamp_ms("{}"), None);
        assert_eq!(
            event_timestamp_ms("{\"event_type\":\"a\",\"data\":{},\"timestamp\":\"bad\"}"),
            None
        );
    }
}
