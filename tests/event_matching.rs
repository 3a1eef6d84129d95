//! The processor's event loop against a real broker: matching waits for the complete table, and
//! undecodable events go to the invalid topic without stopping consumption.

use mgpass_testkit as testkit;

use std::sync::Arc;
use std::time::Duration;

use mgpass_webhooks::app::run_pipeline;
use mgpass_webhooks::metrics::Metrics;
use mgpass_webhooks::processor::{HEADER_INVALID_REASON, HEADER_SOURCE_OFFSET};
use mgpass_webhooks::subscriptions::SubscriptionTable;
use rdkafka::message::{Headers, Message};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_produced_before_the_table_loaded_is_matched_against_the_complete_table() {
    let c = testkit::config("complete");
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    // The event is in Kafka before the processor (and its table load) even starts.
    testkit::produce_all(
        &producer,
        &c.topics.events,
        &[(
            Some("usr_1".into()),
            Some(testkit::event_json("rewards.points_awarded", "usr_1")),
        )],
    )
    .await;
    let subs: Vec<_> = (0..5_000)
        .map(|i| {
            let id = format!("sub_{i:05}");
            let t: &[&str] = if i % 2 == 0 {
                &["*"]
            } else {
                &["rewards.points_awarded"]
            };
            (
                Some(id.clone()),
                Some(testkit::subscription_json(
                    &id,
                    "https://x.example/h",
                    t,
                    None,
                    "s",
                )),
            )
        })
        .chain(std::iter::once((
            Some("sub_other".to_string()),
            Some(testkit::subscription_json(
                "sub_other",
                "https://x.example/h",
                &["cashback.processed"],
                None,
                "s",
            )),
        )))
        .collect();
    testkit::produce_all(&producer, &c.topics.subscriptions, &subs).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(run_pipeline(
        c.clone(),
        Arc::new(SubscriptionTable::new()),
        Arc::new(testkit::ChannelDispatcher(tx)),
        Arc::new(Metrics::new()),
        cancel.clone(),
    ));
    let Some((_, event, matched)) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("event not dispatched within 60 s")
    else {
        panic!("processor stopped: {:?}", run.await.unwrap());
    };
    assert_eq!(event.event_type, "rewards.points_awarded");
    assert_eq!(matched.len(), 5_000, "matched against a partial table");
    assert!(matched.iter().all(|s| s.id != "sub_other"));
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_events_go_to_the_invalid_topic_and_consumption_continues() {
    let c = testkit::config("invalid");
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    let bad: &[u8] = b"this is not json \xff";
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[(
            Some("sub_1".into()),
            Some(testkit::subscription_json(
                "sub_1",
                "https://x.example/h",
                &["*"],
                None,
                "s",
            )),
        )],
    )
    .await;
    // All on one partition (same key) so the good event comes after the bad ones.
    testkit::produce_all(
        &producer,
        &c.topics.events,
        &[
            (Some("usr_9".into()), Some(bad.to_vec())),
            (
                Some("usr_9".into()),
                Some(br#"{"event_type":"x","data":{},"timestamp":"soon"}"#.to_vec()),
            ),
            (Some("usr_9".into()), None),
            (
                Some("usr_9".into()),
                Some(testkit::event_json("cashback.processed", "usr_9")),
            ),
        ],
    )
    .await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let run = tokio::spawn(run_pipeline(
        c.clone(),
        Arc::new(SubscriptionTable::new()),
        Arc::new(testkit::ChannelDispatcher(tx)),
        metrics.clone(),
        cancel.clone(),
    ));
    let Some((source, event, matched)) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the good event after bad ones was not dispatched")
    else {
        panic!("processor stopped: {:?}", run.await.unwrap());
    };
    assert_eq!(event.event_type, "cashback.processed");
    assert_eq!(source.offset, 3);
    assert_eq!(matched.len(), 1);

    let invalid = testkit::read_topic(&c.topics.invalid, 3, Duration::from_secs(30)).await;
    assert_eq!(
        invalid.len(),
        3,
        "every bad record lands in the invalid topic"
    );
    let header = |m: &rdkafka::message::OwnedMessage, name: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|x| x.key == name))
            .and_then(|x| x.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    };
    let mut reasons: Vec<(String, String)> = invalid
        .iter()
        .map(|m| {
            assert_eq!(m.key(), Some(&b"usr_9"[..]), "original key kept");
            (
                header(m, HEADER_SOURCE_OFFSET).unwrap(),
                header(m, HEADER_INVALID_REASON).unwrap(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("0".to_string(), "not_json_object".to_string()),
            ("1".to_string(), "bad_timestamp".to_string()),
            ("2".to_string(), "empty_value".to_string()),
        ]
    );
    let first = invalid
        .iter()
        .find(|m| header(m, HEADER_SOURCE_OFFSET).as_deref() == Some("0"))
        .unwrap();
    assert_eq!(first.payload(), Some(bad), "original bytes kept");
    assert_eq!(metrics.events.with_label_values(&["invalid"]).get(), 3);
    cancel.cancel();
    run.await.unwrap().unwrap();
}
