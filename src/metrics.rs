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
        Metrics {
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
            registry,
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
