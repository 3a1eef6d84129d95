//! Subscriptions that stay put, at the processor level on the real broker: an invalid latest
//! record suspends a subscription while the processor follows the topic — its waiting retry ends
//! as `subscription_invalid`, new events do not reach it — and after a restart it is exactly the
//! same; a valid record brings it back.

use mgpass_testkit as testkit;

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
    metrics: Arc<Metrics>,
}

impl Running {
    fn start(c: &Config) -> Running {
        let cancel = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let handle = tokio::spawn(run_processor(c.clone(), metrics.clone(), cancel.clone()));
        Running {
            cancel,
            handle,
            metrics,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

async fn event(c: &Config, user: &str) {
    testkit::produce_all(
        &testkit::producer(),
        &c.topics.events,
        &[(
            Some(user.into()),
            Some(testkit::event_json("rewards.redeemed", user)),
        )],
    )
    .await;
}

async fn subscription(c: &Config, id: &str, value: Vec<u8>) {
    testkit::produce_all(
        &testkit::producer(),
        &c.topics.subscriptions,
        &[(Some(id.into()), Some(value))],
    )
    .await;
}

async fn log_of(c: &Config, id: &str, count: usize) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> =
        testkit::read_topic(&c.topics.delivery_log, usize::MAX, Duration::from_secs(3))
            .await
            .iter()
            .map(|m| {
                serde_json::from_slice::<DeliveryLogRecord>(rdkafka::Message::payload(m).unwrap())
                    .unwrap()
            })
            .filter(|r| r.subscription_id == id)
            .map(|r| (r.attempt, r.outcome))
            .collect();
    out.sort();
    assert_eq!(out.len(), count, "{id}: {out:?}");
    out
}

async fn wait_gauge(m: &Metrics, value: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while m.subscriptions_invalid.get() != value {
        assert!(
            std::time::Instant::now() < deadline,
            "webhooks_subscriptions_invalid stayed {} (expected {value})",
            m.subscriptions_invalid.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_latest_record_suspends_the_same_way_before_and_after_a_restart() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    receiver.set_behaviour("/s", Behaviour::Sequence(vec![500, 500]));
    let mut c = testkit::config("suspend");
    c.http = receiver.http_config();
    c.delivery.shutdown_deadline_secs = 3;
    testkit::setup_topics(&c).await;
    let good_s = testkit::subscription_json("s", receiver.url("/s").as_str(), &["*"], None, "k1");
    subscription(&c, "s", good_s.clone()).await;
    let good_t = testkit::subscription_json("t", receiver.url("/t").as_str(), &["*"], None, "k2");
    subscription(&c, "t", good_t).await;

    let first = Running::start(&c);
    event(&c, "u1").await;
    // Attempts 1 and 2 (one second later) fail; attempt 3 waits five seconds in its tier.
    receiver.wait_for("/s", 2, Duration::from_secs(60)).await;
    receiver.wait_for("/t", 1, Duration::from_secs(60)).await;
    // Now the latest record of `s` becomes invalid, while the processor follows the topic.
    let bad_s = testkit::subscription_json(
        "s",
        receiver.url("/s").as_str(),
        &["rewards.nope"],
        None,
        "k1",
    );
    subscription(&c, "s", bad_s).await;
    wait_gauge(&first.metrics, 1).await;
    // The waiting retry ends without a request.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while first
        .metrics
        .attempts_total(mgpass_webhooks::metrics::AttemptOutcome::SubscriptionInvalid)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the retry never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        log_of(&c, "s", 3).await,
        [
            (1, "http_error".to_string()),
            (2, "http_error".to_string()),
            (3, "subscription_invalid".to_string())
        ]
    );
    // A new event reaches t only.
    event(&c, "u2").await;
    receiver.wait_for("/t", 2, Duration::from_secs(60)).await;
    first.stop().await;

    // After a restart: the same suspension, from the topic alone.
    let second = Running::start(&c);
    wait_gauge(&second.metrics, 1).await;
    event(&c, "u3").await;
    receiver.wait_for("/t", 3, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received_on("/s").len(), 2, "s got nothing new");
    log_of(&c, "s", 3).await;

    // A valid record ends the suspension.
    subscription(&c, "s", good_s).await;
    wait_gauge(&second.metrics, 0).await;
    event(&c, "u4").await;
    let got = receiver.wait_for("/s", 3, Duration::from_secs(60)).await;
    assert!(String::from_utf8_lossy(&got[2].body).contains("u4"));
    second.stop().await;
}
