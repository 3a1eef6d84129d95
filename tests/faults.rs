//! Faults and bad input on the real broker: no single record stops the processor (oversized
//! events and outputs, an invalid record as large as the producer takes), and a panic in record
//! handling stops the pipeline with an error instead of leaving a zombie.

use mgpass_testkit as testkit;

use std::sync::Arc;
use std::time::Duration;

use mgpass_webhooks::app::{run_pipeline, run_processor};
use mgpass_webhooks::config::Config;
use mgpass_webhooks::delivery::{DeliveryLogRecord, DeliveryTask};
use mgpass_webhooks::dispatch::Dispatcher;
use mgpass_webhooks::events::RewardsEvent;
use mgpass_webhooks::kafka::SourceRef;
use mgpass_webhooks::metrics::Metrics;
use mgpass_webhooks::processor::{HEADER_INVALID_REASON, HEADER_INVALID_TRUNCATED};
use mgpass_webhooks::subscriptions::{Subscription, SubscriptionTable};
use rdkafka::message::{Headers, Message};
use testkit::receiver::{Behaviour, Receiver};
use tokio_util::sync::CancellationToken;

type Record = (Option<String>, Option<Vec<u8>>);

async fn setup(name: &str, receiver: &Receiver) -> Config {
    let mut c = testkit::config(name);
    c.http = receiver.http_config();
    c.http.request_timeout_ms = 5_000;
    c.delivery.shutdown_deadline_secs = 3;
    testkit::setup_topics(&c).await;
    c
}

fn sub(id: &str, receiver: &Receiver, path: &str, types: &[&str]) -> Record {
    receiver.set_secret(path, "a-secret-of-twenty-four-bytes!!");
    let url = receiver.url(path);
    let value = testkit::subscription_json(
        id,
        url.as_str(),
        types,
        None,
        "a-secret-of-twenty-four-bytes!!",
    );
    (Some(id.to_string()), Some(value))
}

fn event_with_text(event_type: &str, user: &str, text: &str) -> Record {
    let v = serde_json::json!({"event_type": event_type,
        "data": {"user_id": user, "text": text},
        "timestamp": "2025-01-15T10:30:00.000Z"});
    (Some(user.to_string()), Some(v.to_string().into_bytes()))
}

fn ordinary(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let user = format!("u{i:04}");
            (
                Some(user.clone()),
                Some(testkit::event_json("rewards.points_awarded", &user)),
            )
        })
        .collect()
}

/// Starts the processor on `c` and returns its cancel token and handle.
fn start(
    c: &Config,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(run_processor(
        c.clone(),
        Arc::new(Metrics::new()),
        cancel.clone(),
    ));
    (cancel, handle)
}

async fn stop(cancel: CancellationToken, handle: tokio::task::JoinHandle<anyhow::Result<()>>) {
    assert!(!handle.is_finished(), "the processor stopped by itself");
    cancel.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_800_kb_event_to_a_failing_endpoint_is_retried_by_reference_and_the_rest_flows() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    receiver.set_behaviour("/big", Behaviour::Sequence(vec![500]));
    let c = setup("big800", &receiver).await;
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[
            sub("sub_big", &receiver, "/big", &["rewards.redeemed"]),
            sub("sub_ok", &receiver, "/ok", &["rewards.points_awarded"]),
        ],
    )
    .await;
    // 400,000 quotes: 800 KB as the event's JSON, 1.6 MB once escaped again into a task record.
    let quotes = "\"".repeat(400_000);
    let mut events = vec![event_with_text("rewards.redeemed", "usr_big", &quotes)];
    events.extend(ordinary(200));
    testkit::produce_all(&producer, &c.topics.events, &events).await;
    let (cancel, handle) = start(&c);

    let ok = receiver.wait_for("/ok", 200, Duration::from_secs(90)).await;
    assert_eq!(ok.len(), 200, "every ordinary event after the big one");
    let big = receiver.wait_for("/big", 2, Duration::from_secs(60)).await;
    assert_eq!(
        big.len(),
        2,
        "attempt 1 failed with 500, attempt 2 delivered"
    );
    assert_eq!(big[0].body, big[1].body, "the retry sends the same bytes");
    assert!(big[0].body.len() > 800_000);
    assert!(big.iter().all(|r| r.signature_valid == Some(true)));
    assert_eq!(big[1].header("x-webhook-attempt"), Some("2"));

    // The retry record carried its body by reference, and fit.
    let retries = testkit::read_topic(&c.topics.retry_1s, 1, Duration::from_secs(30)).await;
    let task: DeliveryTask = serde_json::from_slice(retries[0].payload().unwrap()).unwrap();
    assert!(task.body_by_reference && task.body.is_empty(), "{task:?}");
    assert!(retries[0].payload().unwrap().len() < 10_000);
    stop(cancel, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_just_under_the_producer_limit_is_delivered_and_retried() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    receiver.set_behaviour("/huge", Behaviour::Sequence(vec![503]));
    let c = setup("huge", &receiver).await;
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[
            sub("sub_huge", &receiver, "/huge", &["rewards.redeemed"]),
            sub("sub_ok", &receiver, "/ok", &["rewards.points_awarded"]),
        ],
    )
    .await;
    let text = "a".repeat(999_000 - 120);
    let huge = event_with_text("rewards.redeemed", "usr_huge", &text);
    let size = huge.1.as_ref().unwrap().len();
    assert!((998_000..1_000_000).contains(&size), "{size}");
    let mut events = vec![huge];
    events.extend(ordinary(50));
    testkit::produce_all(&producer, &c.topics.events, &events).await;
    let (cancel, handle) = start(&c);
    assert_eq!(
        receiver
            .wait_for("/ok", 50, Duration::from_secs(90))
            .await
            .len(),
        50
    );
    let got = receiver.wait_for("/huge", 2, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body);
    assert!(got.iter().all(|r| r.signature_valid == Some(true)));
    stop(cancel, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_invalid_events_go_to_the_invalid_topic_in_a_form_that_fits() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut c = setup("invalidbig", &receiver).await;
    c.delivery.max_event_bytes = 300_000;
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[sub("sub_ok", &receiver, "/ok", &["*"])],
    )
    .await;
    // Valid JSON above delivery.max_event_bytes; then garbage just under the producer's limit
    // (too large as well), whose copy with the reason headers would not fit; then ordinary
    // events.
    let mut events = vec![
        event_with_text("rewards.redeemed", "usr_a", &"b".repeat(400_000)),
        (Some("k".into()), Some(vec![b'x'; 999_500])),
    ];
    events.extend(ordinary(100));
    testkit::produce_all(&producer, &c.topics.events, &events).await;
    let (cancel, handle) = start(&c);
    assert_eq!(
        receiver
            .wait_for("/ok", 100, Duration::from_secs(90))
            .await
            .len(),
        100
    );
    let invalid = testkit::read_topic(&c.topics.invalid, 2, Duration::from_secs(30)).await;
    assert_eq!(invalid.len(), 2);
    let header = |m: &rdkafka::message::OwnedMessage, key: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == key))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let mut reasons: Vec<_> = invalid
        .iter()
        .map(|m| header(m, HEADER_INVALID_REASON).unwrap())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["event_too_large", "event_too_large"]);
    let garbage = invalid.iter().find(|m| m.key() == Some(b"k")).unwrap();
    assert_eq!(
        header(garbage, HEADER_INVALID_TRUNCATED).as_deref(),
        Some("999500")
    );
    assert!(garbage.payload().unwrap().len() < 999_500);
    let too_large = invalid.iter().find(|m| m.key() == Some(b"usr_a")).unwrap();
    assert_eq!(
        header(too_large, HEADER_INVALID_TRUNCATED),
        None,
        "it fits whole"
    );
    let log = testkit::read_topic(&c.topics.delivery_log, 100, Duration::from_secs(30)).await;
    assert!(log.iter().all(
        |m| serde_json::from_slice::<DeliveryLogRecord>(m.payload().unwrap())
            .is_ok_and(|r| r.outcome == "success")
    ));
    stop(cancel, handle).await;
}

/// A dispatcher whose record handling panics on one event type: a bug, injected.
struct PanicOn(&'static str);

impl Dispatcher for PanicOn {
    async fn dispatch_event(
        &self,
        _source: SourceRef,
        event: Arc<RewardsEvent>,
        _subscriptions: Vec<Arc<Subscription>>,
    ) -> anyhow::Result<()> {
        assert_ne!(event.event_type, self.0, "injected panic");
        Ok(())
    }

    async fn dispatch_task(&self, _task: DeliveryTask) -> anyhow::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_record_handling_stops_the_pipeline_with_an_error() {
    let c = testkit::config("panic");
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.events,
        &[
            (
                Some("u1".into()),
                Some(testkit::event_json("rewards.redeemed", "u1")),
            ),
            (
                Some("u2".into()),
                Some(testkit::event_json("test.panic", "u2")),
            ),
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let run = tokio::spawn(run_pipeline(
        c.clone(),
        Arc::new(SubscriptionTable::new()),
        Arc::new(PanicOn("test.panic")),
        Arc::new(Metrics::new()),
        cancel.clone(),
    ));
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the pipeline stops promptly after the panic")
        .unwrap();
    let err = result.expect_err("a panic is an error, never a zombie");
    let text = format!("{err:#}");
    assert!(text.contains("panicked"), "{text}");
    assert!(
        text.contains("injected panic"),
        "the panic's own message: {text}"
    );
    assert!(cancel.is_cancelled(), "every task was cancelled");
}
