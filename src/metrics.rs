//! The closed set of Prometheus metrics. One metric is one named field here; label values are
//! bounded (outcome and reason codes, tier names), never raw error text, ids or URLs. Each
//! [`Metrics`] owns its registry so tests can assert on an isolated instance.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Subscription records applied, by `outcome` (`put`, `delete`, `invalid`).
    pub subscription_records: IntCounterVec,
    /// Invalid subscription records, by `reason` code.
    pub subscription_invalid: IntCounterVec,
    /// Subscriptions currently in the table.
    pub subscriptions: IntGauge,
    /// Subscriptions whose latest record is invalid (suspended: no deliveries).
    pub subscriptions_invalid: IntGauge,
    /// 1 once the subscription table has loaded to the end offsets captured at start.
    pub subscriptions_loaded: IntGauge,
    /// Seconds the initial subscription table load took.
    pub subscription_load_seconds: prometheus::Gauge,
    /// Rewards event records consumed, by `outcome` (`matched`, `unmatched`, `invalid`).
    pub events: IntCounterVec,
    /// Undecodable event records sent to the invalid topic, by `reason` code.
    pub invalid_events: IntCounterVec,
    /// (event, subscription) pairs matched.
    pub matches: IntCounter,
    /// Numbers JavaScript cannot represent exactly, sent as their nearest double.
    pub inexact_numbers: IntCounter,
    /// Delivery attempts, by `outcome` (`success`, `http_error`, `timeout`, `connect_error`,
    /// `redirect`, `address_refused`, `subscription_deleted`, `subscription_invalid`, …).
    pub attempts: IntCounterVec,
    /// Deliveries that ended, by `result` (`delivered`, `failed`, `dropped`).
    pub deliveries: IntCounterVec,
    /// Duration of one HTTP attempt.
    pub attempt_seconds: Histogram,
    /// Deliveries currently in flight.
    pub in_flight: IntGauge,
    /// Delivery tasks produced to a retry topic, by `tier`.
    pub retries_scheduled: IntCounterVec,
    /// Output records Kafka refused, by [`ProduceErrorKind`].
    pub produce_errors: IntCounterVec,
    /// Records of the retry and replay topics that are not usable delivery tasks, or were
    /// clamped, by [`TaskRecordProblem`].
    pub task_record_problems: IntCounterVec,
}

/// How a produce error was handled (`kind` label of `webhooks_produce_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceErrorKind {
    /// Tried again until the broker took the record.
    Retriable,
    /// The record can never be written: passed over.
    Permanent,
    /// The producer itself failed: the process stops.
    Fatal,
}

impl ProduceErrorKind {
    pub const ALL: [ProduceErrorKind; 3] = [Self::Retriable, Self::Permanent, Self::Fatal];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retriable => "retriable",
            Self::Permanent => "permanent",
            Self::Fatal => "fatal",
        }
    }
}

/// What was wrong with a task record (`problem` label of `webhooks_task_record_problems_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRecordProblem {
    /// Not a delivery task (not JSON of the task's shape, or no value): skipped.
    Undecodable,
    /// Due later than its topic can ask for: attempted at the latest due time its topic allows.
    DueTooLate,
    /// An attempt number outside 1..=4: clamped into the schedule.
    BadAttempt,
}

impl TaskRecordProblem {
    pub const ALL: [TaskRecordProblem; 3] = [Self::Undecodable, Self::DueTooLate, Self::BadAttempt];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::DueTooLate => "due_too_late",
            Self::BadAttempt => "bad_attempt",
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let subscription_load_seconds = prometheus::Gauge::new(
            "webhooks_subscription_load_seconds",
            "Seconds the initial subscription table load took",
        )
        .expect("valid metric");
        registry
            .register(Box::new(subscription_load_seconds.clone()))
            .expect("unique metric");
        let attempt_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "webhooks_attempt_duration_seconds",
                "Duration of one HTTP delivery attempt",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(attempt_seconds.clone()))
            .expect("unique metric");
        let m = Metrics {
            subscription_records: counter_vec(
                "webhooks_subscription_records_total",
                "Subscription records applied, by outcome",
                &["outcome"],
            ),
            subscription_invalid: counter_vec(
                "webhooks_subscription_invalid_records_total",
                "Invalid subscription records ignored, by reason",
                &["reason"],
            ),
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
            events: counter_vec(
                "webhooks_events_total",
                "Rewards event records consumed, by outcome",
                &["outcome"],
            ),
            invalid_events: counter_vec(
                "webhooks_invalid_events_total",
                "Undecodable event records sent to the invalid topic, by reason",
                &["reason"],
            ),
            matches: counter(
                "webhooks_matches_total",
                "(event, subscription) pairs matched",
            ),
            inexact_numbers: counter(
                "webhooks_inexact_numbers_total",
                "Numbers JavaScript cannot represent exactly, sent as their nearest double",
            ),
            attempts: counter_vec(
                "webhooks_attempts_total",
                "Delivery attempts, by outcome",
                &["outcome"],
            ),
            deliveries: counter_vec(
                "webhooks_deliveries_total",
                "Deliveries that ended, by result",
                &["result"],
            ),
            attempt_seconds,
            in_flight: gauge("webhooks_in_flight", "Deliveries currently in flight"),
            retries_scheduled: counter_vec(
                "webhooks_retries_scheduled_total",
                "Delivery tasks produced to a retry topic, by tier",
                &["tier"],
            ),
            produce_errors: counter_vec(
                "webhooks_produce_errors_total",
                "Output records Kafka refused, by how the error was handled",
                &["kind"],
            ),
            task_record_problems: counter_vec(
                "webhooks_task_record_problems_total",
                "Retry and replay records that were unusable (skipped) or clamped, by problem",
                &["problem"],
            ),
            registry,
        };
        for kind in ProduceErrorKind::ALL {
            m.produce_errors.with_label_values(&[kind.as_str()]);
        }
        for problem in TaskRecordProblem::ALL {
            m.task_record_problems
                .with_label_values(&[problem.as_str()]);
        }
        m
    }

    pub fn produce_error(&self, kind: ProduceErrorKind) {
        self.produce_errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    pub fn task_record_problem(&self, problem: TaskRecordProblem) {
        self.task_record_problems
            .with_label_values(&[problem.as_str()])
            .inc();
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_with_base_units_and_total_suffix() {
        let m = Metrics::new();
        m.events.with_label_values(&["matched"]).inc();
        m.attempt_seconds.observe(0.01);
        let text = m.render();
        assert!(
            text.contains("webhooks_events_total{outcome=\"matched\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("webhooks_attempt_duration_seconds_bucket"),
            "{text}"
        );
    }
}
