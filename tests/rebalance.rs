//! Graceful rebalances on the real broker, with processor binaries as child processes: a member
//! joining and a member leaving by SIGTERM in the middle of a run lose nothing and re-send
//! almost nothing (cooperative-sticky assignment; revoked partitions drain and commit first).

use mgpass_testkit as testkit;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use mgpass_webhooks::config::Config;
use testkit::process::{free_port, Options, Processor};
use testkit::receiver::{Behaviour, Receiver};

const EVENTS: usize = 20_000;

fn spawn(c: &Config, receiver: &Receiver, name: &str) -> Processor {
    let mut c = c.clone();
    c.admin.listen = format!("127.0.0.1:{}", free_port().unwrap());
    c.http.ca_bundle = Some(receiver.ca_file());
    c.http.request_timeout_ms = 5_000;
    c.delivery.shutdown_deadline_secs = 20;
    let log = std::env::temp_dir().join(format!("{}-{name}.log", c.kafka.group_id));
    Processor::spawn(
        Path::new(env!("CARGO_BIN_EXE_mgpass-webhooks")),
        &c,
        Options {
            log: Some(log),
            rust_log: Some("info".into()),
            ..Options::default()
        },
    )
    .expect("start the processor binary")
}

/// Distinct user ids received so far, and every request's user id.
fn received(receiver: &Receiver) -> (HashSet<String>, Vec<String>) {
    let users: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["data"]["user_id"].as_str().unwrap().to_string()
        })
        .collect();
    (users.iter().cloned().collect(), users)
}

async fn wait_for_distinct(receiver: &Receiver, n: usize, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while received(receiver).0.len() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {n} distinct deliveries within {within:?}",
            received(receiver).0.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_and_one_leaving_by_sigterm_lose_nothing_and_resend_at_most_1_percent() {
    let receiver = Receiver::start(Behaviour::Delay(Duration::from_millis(2), 200)).await;
    let mut c = testkit::config("rebalance");
    c.topic_setup.partitions = 6;
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    receiver.set_secret("/hook", "a-secret-of-twenty-four-bytes!!");
    let url = receiver.url("/hook");
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[(
            Some("sub_all".into()),
            Some(testkit::subscription_json(
                "sub_all",
                url.as_str(),
                &["*"],
                None,
                "a-secret-of-twenty-four-bytes!!",
            )),
        )],
    )
    .await;

    let mut first = spawn(&c, &receiver, "first");
    let mut second = spawn(&c, &receiver, "second");
    first.wait_ready(Duration::from_secs(60)).await.unwrap();
    second.wait_ready(Duration::from_secs(60)).await.unwrap();

    let events: Vec<_> = (0..EVENTS)
        .map(|i| {
            let user = format!("u{i:05}");
            (
                Some(user.clone()),
                Some(testkit::event_json("rewards.points_awarded", &user)),
            )
        })
        .collect();
    let topic = c.topics.events.clone();
    let produce = tokio::spawn(async move {
        let producer = testkit::producer();
        testkit::produce_all(&producer, &topic, &events).await;
    });

    // A third member joins a quarter of the way in; the first leaves by SIGTERM half way.
    wait_for_distinct(
        &receiver,
        EVENTS / 4,
        Duration::from_secs(120),
        "before the join",
    )
    .await;
    let mut third = spawn(&c, &receiver, "third");
    third.wait_ready(Duration::from_secs(60)).await.unwrap();
    wait_for_distinct(
        &receiver,
        EVENTS / 2,
        Duration::from_secs(120),
        "before the leave",
    )
    .await;
    first.signal("-TERM").unwrap();
    let status = first.wait_exit(Duration::from_secs(40)).await.unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    produce.await.unwrap();

    wait_for_distinct(
        &receiver,
        EVENTS,
        Duration::from_secs(180),
        "after the rebalances",
    )
    .await;
    // Anything still to be re-sent arrives within a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.check_alive().unwrap();
    third.check_alive().unwrap();
    let (distinct, all) = received(&receiver);
    assert_eq!(distinct.len(), EVENTS, "every delivery arrived");
    let resent = all.len() - EVENTS;
    let report = format!(
        "rebalance: {EVENTS} deliveries, {} requests, {resent} re-sent ({:.2} %) across a join and a SIGTERM leave\n",
        all.len(),
        resent as f64 * 100.0 / EVENTS as f64
    );
    eprint!("{report}");
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("rebalance-report.txt"),
        &report,
    )
    .unwrap();
    assert!(
        resent * 100 <= EVENTS,
        "graceful rebalances re-sent {resent} of {EVENTS} (more than 1 %)"
    );
    assert!(receiver
        .received()
        .iter()
        .all(|r| r.signature_valid == Some(true)));
    second.stop(Duration::from_secs(30)).await.unwrap();
    third.stop(Duration::from_secs(30)).await.unwrap();
}
