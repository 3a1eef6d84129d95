//! The delivery engine end to end on the real broker, with an in-process HTTPS receiver that
//! verifies every signature as the guide does.

use mgpass_testkit as testkit;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mgpass_webhooks::app::run_processor;
use mgpass_webhooks::config::Config;
use mgpass_webhooks::delivery::DeliveryLogRecord;
use mgpass_webhooks::metrics::Metrics;
use testkit::receiver::{Behaviour, Receiver};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

fn start(c: &Config) -> Running {
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(run_processor(
        c.clone(),
        Arc::new(Metrics::new()),
        cancel.clone(),
    ));
    Running { cancel, handle }
}

/// A keyed record for [`testkit::produce_all`].
type Record = (Option<String>, Option<Vec<u8>>);

/// Produces `subs` to the subscriptions topic and then `events` to the events topic, and starts
/// the processor.
async fn given(c: &Config, subs: &[Record], events: &[Record]) -> Running {
    let producer = testkit::producer();
    testkit::produce_all(&producer, &c.topics.subscriptions, subs).await;
    testkit::produce_all(&producer, &c.topics.events, events).await;
    start(c)
}

fn sub(
    id: &str,
    url: &url::Url,
    types: &[&str],
    client: Option<&str>,
    secret: &str,
    enabled: bool,
) -> Record {
    let v = serde_json::json!({"id": id, "url": url.as_str(), "event_types": types,
        "client_id": client, "secret": secret, "enabled": enabled});
    (Some(id.to_string()), Some(v.to_string().into_bytes()))
}

fn event(event_type: &str, user: &str, client: Option<&str>) -> Record {
    let mut v = serde_json::json!({"event_type": event_type,
        "data": {"user_id": user, "points": 150.0, "ratio": 1e21},
        "timestamp": "2025-01-15T12:30:00+02:00"});
    if let Some(c) = client {
        v["client_id"] = c.into();
    }
    (Some(user.to_string()), Some(v.to_string().into_bytes()))
}

async fn delivery_log(c: &Config, count: usize) -> Vec<DeliveryLogRecord> {
    testkit::read_topic(&c.topics.delivery_log, count, Duration::from_secs(60))
        .await
        .iter()
        .map(|m| serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap())
        .collect()
}

async fn setup(name: &str, receiver: &Receiver) -> Config {
    let mut c = testkit::config(name);
    c.http = receiver.http_config();
    c.http.request_timeout_ms = 2_000;
    c.http.connect_timeout_ms = 1_000;
    c.delivery.shutdown_deadline_secs = 3;
    testkit::setup_topics(&c).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_times_subscriptions_give_exactly_the_expected_signed_deliveries() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("matrix", &receiver).await;
    let pts = "rewards.points_awarded";
    let subs = [
        ("all", vec!["*"], None, true),
        ("points", vec![pts], None, true),
        ("cash", vec!["cashback.processed"], None, true),
        ("scoped", vec![pts], Some("app1"), true),
        ("off", vec!["*"], None, false),
    ];
    let producer = testkit::producer();
    let mut records = Vec::new();
    for (id, types, client, enabled) in &subs {
        let path = format!("/{id}");
        receiver.set_secret(&path, &format!("secret-{id}"));
        records.push(sub(
            id,
            &receiver.url(&path),
            types,
            *client,
            &format!("secret-{id}"),
            *enabled,
        ));
    }
    testkit::produce_all(&producer, &c.topics.subscriptions, &records).await;
    let events = [
        event(pts, "u1", None),
        event(pts, "u2", Some("app1")),
        event(pts, "u3", Some("app2")),
        event("cashback.processed", "u4", None),
        event("custom.unknown", "u5", Some("app1")),
    ];
    testkit::produce_all(&producer, &c.topics.events, &events).await;
    // Expected (path → users): all: u1..u5; points: u1,u2,u3; cash: u4; scoped: u2; off: none.
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, users) in [
        ("/all", &["u1", "u2", "u3", "u4", "u5"][..]),
        ("/points", &["u1", "u2", "u3"]),
        ("/cash", &["u4"]),
        ("/scoped", &["u2"]),
    ] {
        expected.insert(path.into(), users.iter().map(|u| u.to_string()).collect());
    }
    let running = start(&c);
    let total: usize = expected.values().map(Vec::len).sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.received().len() < total && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Extra (wrong) deliveries would arrive right behind the expected ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    let mut actual: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &got {
        assert_eq!(r.signature_valid, Some(true), "bad signature on {}", r.path);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(text.starts_with("{\"event_type\":"), "{text}");
        assert!(
            text.contains("\"points\":150,\"ratio\":1e+21"),
            "JS number formatting: {text}"
        );
        assert!(
            text.ends_with("\"timestamp\":\"2025-01-15T10:30:00.000Z\"}"),
            "{text}"
        );
        assert!(r.header("x-webhook-id").unwrap().starts_with("dlv_"));
        assert_eq!(r.header("x-webhook-attempt"), Some("1"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r
            .header("user-agent")
            .unwrap()
            .starts_with("mgpass-webhooks/"));
        actual
            .entry(r.path.clone())
            .or_default()
            .push(body["data"]["user_id"].as_str().unwrap().to_string());
    }
    for users in actual.values_mut() {
        users.sort();
    }
    assert_eq!(actual, expected);
    let log = delivery_log(&c, total).await;
    assert_eq!(log.len(), total);
    assert!(log
        .iter()
        .all(|l| l.outcome == "success" && l.attempt == 1 && l.http_status == Some(200)));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failing_twice_is_delivered_on_attempt_3_after_1s_and_5s() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("retry3", &receiver).await;
    receiver.set_behaviour("/flaky", Behaviour::Sequence(vec![503, 500]));
    receiver.set_secret("/flaky", "s1");
    let running = given(
        &c,
        &[sub(
            "flaky",
            &receiver.url("/flaky"),
            &["*"],
            None,
            "s1",
            true,
        )],
        &[event("rewards.redeemed", "u1", None)],
    )
    .await;
    let got = receiver
        .wait_for("/flaky", 3, Duration::from_secs(30))
        .await;
    assert_eq!(got.len(), 3);
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    eprintln!("gaps at the receiver: {gap1:?}, {gap2:?}");
    assert!(
        gap1 >= Duration::from_secs(1) && gap1 < Duration::from_secs(4),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_secs(5) && gap2 < Duration::from_secs(9),
        "{gap2:?}"
    );
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap().to_string())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "same delivery id on every attempt"
    );
    let attempts: Vec<_> = got
        .iter()
        .map(|r| r.header("x-webhook-attempt").unwrap().to_string())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(got.iter().all(|r| r.signature_valid == Some(true)));
    let mut log = delivery_log(&c, 3).await;
    log.sort_by_key(|l| l.attempt);
    let outcomes: Vec<_> = log
        .iter()
        .map(|l| (l.attempt, l.outcome.as_str(), l.http_status))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, "http_error", Some(503)),
            (2, "http_error", Some(500)),
            (3, "success", Some(200))
        ]
    );
    assert!(log[0].next_attempt_at.is_some() && log[2].next_attempt_at.is_none());
    assert_eq!(
        log[0].idempotency_key,
        "rewards.redeemedu12025-01-15T10:30:00.000Z"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_use_the_current_subscription_and_stop_when_it_is_deleted() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("current", &receiver).await;
    receiver.set_behaviour("/old", Behaviour::Status(500));
    receiver.set_behaviour("/gone", Behaviour::Status(500));
    receiver.set_secret("/new", "rotated");
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[
            sub("moving", &receiver.url("/old"), &["*"], None, "first", true),
            sub("gone", &receiver.url("/gone"), &["*"], None, "g", true),
        ],
    )
    .await;
    testkit::produce_all(
        &producer,
        &c.topics.events,
        &[event("rewards.redeemed", "u1", None)],
    )
    .await;
    let running = start(&c);
    receiver.wait_for("/old", 1, Duration::from_secs(30)).await;
    receiver.wait_for("/gone", 1, Duration::from_secs(30)).await;
    // Before the 1 s retry: move "moving" to a new URL and secret, delete "gone".
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[
            sub(
                "moving",
                &receiver.url("/new"),
                &["*"],
                None,
                "rotated",
                true,
            ),
            (Some("gone".into()), None),
        ],
    )
    .await;
    let got = receiver.wait_for("/new", 1, Duration::from_secs(30)).await;
    assert_eq!(
        got[0].signature_valid,
        Some(true),
        "retry must sign with the new secret"
    );
    assert_eq!(got[0].header("x-webhook-attempt"), Some("2"));
    let log = delivery_log(&c, 4).await;
    let gone: Vec<_> = log.iter().filter(|l| l.subscription_id == "gone").collect();
    assert_eq!(gone.len(), 2, "{log:?}");
    assert_eq!(gone[1].outcome, "subscription_deleted");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        receiver.received_on("/gone").len(),
        1,
        "no attempts after the delete"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_hold_up_a_healthy_one() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut c = setup("hang", &receiver).await;
    c.http.request_timeout_ms = 10_000;
    receiver.set_behaviour("/hang", Behaviour::Hang);
    // Hanging deliveries first, on every partition, then the healthy ones.
    let mut events: Vec<_> = (0..30)
        .map(|i| event("rewards.redeemed", &format!("h{i}"), None))
        .collect();
    events.extend((0..30).map(|i| event("cashback.processed", &format!("f{i}"), None)));
    let running = given(
        &c,
        &[
            sub(
                "slow",
                &receiver.url("/hang"),
                &["rewards.redeemed"],
                None,
                "s",
                true,
            ),
            sub(
                "fast",
                &receiver.url("/ok"),
                &["cashback.processed"],
                None,
                "s",
                true,
            ),
        ],
        &events,
    )
    .await;
    let started = std::time::Instant::now();
    let got = receiver.wait_for("/ok", 30, Duration::from_secs(30)).await;
    let took = started.elapsed();
    eprintln!("30 healthy deliveries behind 30 hanging ones took {took:?}");
    assert_eq!(got.len(), 30);
    assert!(
        took < Duration::from_secs(8),
        "healthy deliveries waited for the hanging endpoint: {took:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_queued_for_a_hanging_endpoint_are_shed_once_it_is_slow_not_after_the_stall_time()
{
    // Two connections to the endpoint, both hanging; ten more attempts queue for them. The
    // endpoint is slow after slow_request_ms (300 ms) without an answer, and a slow endpoint that
    // has granted no connection for that long counts as stalled: the queued attempts end as
    // endpoint_saturated within a second or so, not after endpoint_stall_ms (20 s), so they do
    // not hold their event records (and the record budget) for the whole stall time.
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut c = setup("slowstall", &receiver).await;
    c.http.request_timeout_ms = 30_000;
    c.delivery.max_in_flight_per_endpoint = 2;
    c.delivery.endpoint_stall_ms = 20_000;
    c.delivery.slow_request_ms = 300;
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    receiver.set_behaviour("/hang", Behaviour::Hang);
    let events: Vec<_> = (0..12)
        .map(|i| event("rewards.redeemed", &format!("h{i}"), None))
        .collect();
    let started = std::time::Instant::now();
    let running = given(
        &c,
        &[sub(
            "slow",
            &receiver.url("/hang"),
            &["rewards.redeemed"],
            None,
            "s",
            true,
        )],
        &events,
    )
    .await;
    let log = delivery_log(&c, 10).await;
    let took = started.elapsed();
    eprintln!("10 attempts queued behind 2 hanging ones were shed after {took:?}");
    assert_eq!(log.len(), 10, "every queued attempt logged: {log:?}");
    assert!(
        log.iter()
            .all(|l| l.outcome == "endpoint_saturated" && l.attempt == 1),
        "{log:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "queued attempts waited for the 20 s stall time: {took:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_that_always_fails_gets_4_attempts_at_0_1_6_31_s_then_one_failed_record() {
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let c = setup("exhaust", &receiver).await;
    let running = given(
        &c,
        &[sub("down", &receiver.url("/down"), &["*"], None, "s", true)],
        &[event("rewards.redeemed", "u1", None)],
    )
    .await;
    let got = receiver.wait_for("/down", 4, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 4);
    let at: Vec<f64> = got
        .iter()
        .map(|r| (r.at - got[0].at).as_secs_f64())
        .collect();
    eprintln!("attempts at {at:?} s");
    for (actual, planned) in at.iter().zip([0.0, 1.0, 6.0, 31.0]) {
        assert!(
            *actual >= planned && *actual < planned + 3.0,
            "attempts at {at:?}"
        );
    }
    let failed = testkit::read_topic(&c.topics.failed, 1, Duration::from_secs(30)).await;
    assert_eq!(failed.len(), 1);
    let task: mgpass_webhooks::delivery::DeliveryTask =
        serde_json::from_slice(rdkafka::Message::payload(&failed[0]).unwrap()).unwrap();
    assert_eq!(task.attempt, 4);
    assert_eq!(task.subscription_id, "down");
    assert_eq!(task.last_status, Some(500));
    assert_eq!(
        task.body.as_bytes(),
        &got[0].body[..],
        "the failed record can be sent again"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received_on("/down").len(), 4, "no fifth attempt");
    assert_eq!(
        testkit::read_topic(&c.topics.failed, 2, Duration::from_secs(3))
            .await
            .len(),
        1
    );
    running.stop().await;
}

/// Listeners that accept connections and never say a word (not even the TLS handshake): as many
/// distinct hanging origins as wanted, without certificates. They live until the test ends.
async fn tarpits(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
    }
    ports
}

/// Subscriptions for `origins` hanging origins (tarpits) and one healthy one (`/ok` of
/// `receiver`), and events for them: `per_origin` hanging deliveries per origin first, then
/// `healthy` healthy ones. Produced to `c`'s topics.
async fn hanging_origins_then_healthy(
    c: &Config,
    receiver: &Receiver,
    origins: usize,
    per_origin: usize,
    healthy: usize,
) {
    let ports = tarpits(origins).await;
    let mut subs = vec![sub(
        "healthy",
        &receiver.url("/ok"),
        &["cashback.processed"],
        None,
        "s",
        true,
    )];
    for (i, port) in ports.iter().enumerate() {
        let url = url::Url::parse(&format!("https://127.0.0.1:{port}/hang")).unwrap();
        subs.push(sub(
            &format!("hang{i}"),
            &url,
            &["rewards.redeemed"],
            Some(&format!("h{i}")),
            "s",
            true,
        ));
    }
    let mut events: Vec<_> = (0..origins * per_origin)
        .map(|i| {
            event(
                "rewards.redeemed",
                &format!("u{i}"),
                Some(&format!("h{}", i % origins)),
            )
        })
        .collect();
    events.extend((0..healthy).map(|i| event("cashback.processed", &format!("f{i}"), None)));
    let producer = testkit::producer();
    testkit::produce_all(&producer, &c.topics.subscriptions, &subs).await;
    testkit::produce_all(&producer, &c.topics.events, &events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_number_of_hanging_origins_leave_healthy_deliveries_their_share() {
    // 8 hanging origins × 2 connections each (an eighth of 16: none has answered yet) want 16
    // places in flight, twice the slow endpoints' share. Endpoint permit first, global second
    // once let hanging origins take all of the global 32 for the whole request timeout, and the
    // healthy endpoint's waiting attempts were then shed as endpoint_saturated. Slow endpoints
    // share at most 25 % (8 places): an attempt unanswered for slow_request_ms marks its
    // endpoint slow and goes on only within that share.
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut c = setup("slowshare", &receiver).await;
    c.http.request_timeout_ms = 20_000;
    c.http.connect_timeout_ms = 20_000;
    c.delivery.max_in_flight = 32;
    c.delivery.max_in_flight_per_endpoint = 16;
    c.delivery.slow_request_ms = 300;
    c.delivery.slow_share_percent = 25;
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    hanging_origins_then_healthy(&c, &receiver, 8, 16, 300).await;
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(run_processor(c.clone(), metrics.clone(), cancel.clone()));
    // The most the slow endpoints held at once, sampled while the run lasts.
    let peak = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let sampler = tokio::spawn({
        let (metrics, peak) = (metrics.clone(), peak.clone());
        async move {
            loop {
                peak.fetch_max(
                    metrics.slow_in_flight.get(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let started = std::time::Instant::now();
    let got = receiver.wait_for("/ok", 300, Duration::from_secs(30)).await;
    let took = started.elapsed();
    // The healthy deliveries may all be done before the hanging origins are found slow: keep
    // sampling until they have been (their attempts beyond the share are then given up).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics.slow_abandoned.get() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let abandoned = metrics.slow_abandoned.get();
    eprintln!(
        "300 healthy deliveries beside 8 hanging origins took {took:?}; slow endpoints held at \
         most {peak} places; {abandoned} hanging attempts given up"
    );
    assert_eq!(got.len(), 300);
    assert!(
        took < Duration::from_secs(10),
        "healthy deliveries waited for the hanging origins' 20 s timeout: {took:?}"
    );
    assert!(
        peak <= 8,
        "slow endpoints held {peak} places, more than their share of 8"
    );
    assert!(
        abandoned > 0,
        "the hanging origins never filled their share"
    );
    cancel.cancel();
    handle.await.unwrap().unwrap();
    // Every healthy attempt was sent and succeeded: exactly one log record per healthy
    // delivery, none shed as endpoint_saturated. (The whole log: the processor has stopped.)
    let log: Vec<DeliveryLogRecord> =
        testkit::read_topic(&c.topics.delivery_log, usize::MAX, Duration::from_secs(5))
            .await
            .iter()
            .map(|m| serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap())
            .collect();
    let healthy: Vec<_> = log
        .iter()
        .filter(|l| l.subscription_id == "healthy")
        .collect();
    let not_success: Vec<_> = healthy.iter().filter(|l| l.outcome != "success").collect();
    assert!(
        not_success.is_empty(),
        "healthy attempts failed: {not_success:?}"
    );
    assert_eq!(healthy.len(), 300, "one attempt per healthy delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_origins_that_hang_from_their_first_request_hold_an_eighth_of_their_slots() {
    // 8 hanging origins × 16 connections want 128 places, four times the global 32, and none
    // is known to be slow for 8 s (slow_request_ms). With their whole limit they would hold
    // every global place for those 8 s and the healthy endpoint's deliveries would wait behind
    // them. An origin that has not answered has 2 slots (an eighth of 16): 16 places, and the
    // healthy endpoint, once answered, has the other 16 from the start.
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut c = setup("firstslots", &receiver).await;
    c.http.request_timeout_ms = 20_000;
    c.http.connect_timeout_ms = 20_000;
    c.delivery.max_in_flight = 32;
    c.delivery.max_in_flight_per_endpoint = 16;
    c.delivery.slow_request_ms = 8_000;
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    hanging_origins_then_healthy(&c, &receiver, 8, 16, 300).await;
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let started = std::time::Instant::now();
    let handle = tokio::spawn(run_processor(c.clone(), metrics.clone(), cancel.clone()));
    let got = receiver.wait_for("/ok", 300, Duration::from_secs(30)).await;
    let took = started.elapsed();
    eprintln!("300 healthy deliveries beside 8 new hanging origins took {took:?}");
    assert_eq!(got.len(), 300);
    assert!(
        took < Duration::from_secs(6),
        "healthy deliveries waited for the hanging origins to be found slow (8 s): {took:?}"
    );
    cancel.cancel();
    handle.await.unwrap().unwrap();
}
