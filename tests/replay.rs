//! The operator tools end to end on the real broker: failed deliveries listed, planned
//! (`--dry-run`), replayed through the processor with a fresh attempt budget and the same
//! delivery id, not replayed twice, selected exactly, skipped when their subscription went away
//! or changed; retries that no longer match; a paced replay of 20,000 records; subscription
//! admin's secret handling. The CLI is the real binary; the processor runs in-process.

use mgpass_testkit as testkit;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mgpass_webhooks::app::run_processor;
use mgpass_webhooks::config::Config;
use mgpass_webhooks::delivery::{DeliveryLogRecord, DeliveryTask, ReplayMarker};
use mgpass_webhooks::kafka::SourceRef;
use mgpass_webhooks::metrics::Metrics;
use mgpass_webhooks::ops::failed::read_failed;
use mgpass_webhooks::ops::replay::{self, ReplayArgs};
use mgpass_webhooks::ops::{SelectorArgs, UsageError};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use testkit::receiver::{Behaviour, Receiver};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PTS: &str = "rewards.points_awarded";
const SECRET: &str = "replay-test-secret-0123456789";

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

async fn setup(name: &str, receiver: &Receiver) -> Config {
    let mut c = testkit::config(name);
    c.http = receiver.http_config();
    c.http.request_timeout_ms = 2_000;
    c.http.connect_timeout_ms = 1_000;
    c.delivery.shutdown_deadline_secs = 3;
    testkit::setup_topics(&c).await;
    c
}

type Record = (Option<String>, Option<Vec<u8>>);

fn sub(id: &str, url: &url::Url, types: &[&str], client: Option<&str>, enabled: bool) -> Record {
    let v = serde_json::json!({"id": id, "url": url.as_str(), "event_types": types,
        "client_id": client, "secret": SECRET, "enabled": enabled});
    (Some(id.to_string()), Some(v.to_string().into_bytes()))
}

async fn put_subs(c: &Config, subs: &[Record]) {
    testkit::produce_all(&testkit::producer(), &c.topics.subscriptions, subs).await;
}

/// A failed task as the engine writes it, for producing straight to the failed topic.
fn failed_task(
    id: &str,
    sub: &str,
    event_type: &str,
    outcome: &str,
    failed_at_ms: i64,
    client: Option<&str>,
) -> DeliveryTask {
    DeliveryTask {
        delivery_id: id.into(),
        subscription_id: sub.into(),
        event_type: event_type.into(),
        idempotency_key: format!("{event_type}u1{failed_at_ms}"),
        body: format!(
            r#"{{"event_type":"{event_type}","data":{{"user_id":"{id}"}},"timestamp":"2025-01-15T10:30:00.000Z"}}"#
        )
        .into(),
        body_by_reference: false,
        attempt: 4,
        due_at_ms: failed_at_ms,
        first_attempt_at_ms: failed_at_ms - 31_000,
        source: SourceRef {
            topic: "rewards.events".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        },
        last_error: Some(format!("{outcome} (test)")),
        last_status: (outcome == "http_error").then_some(503),
        last_outcome: Some(outcome.into()),
        client_id: Some(client.map(str::to_string)),
        failed_at_ms: Some(failed_at_ms),
        replay: None,
    }
}

/// Produces tasks to `topic` keyed by delivery id, each with its failed time as the Kafka
/// timestamp (as the engine's record has), and waits for every acknowledgement.
async fn produce_tasks(topic: &str, tasks: &[DeliveryTask]) {
    let producer = testkit::producer();
    let mut acks = Vec::new();
    for t in tasks {
        let value = serde_json::to_vec(t).unwrap();
        let mut record = FutureRecord::to(topic)
            .key(t.delivery_id.as_str())
            .payload(&value);
        if let Some(ts) = t.failed_at_ms {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send_result(record) {
                Ok(ack) => {
                    acks.push(ack);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
}

async fn delivery_log(c: &Config, count: usize, timeout: Duration) -> Vec<DeliveryLogRecord> {
    testkit::read_topic(&c.topics.delivery_log, count, timeout)
        .await
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect()
}

async fn replay_topic(c: &Config, count: usize, timeout: Duration) -> Vec<DeliveryTask> {
    testkit::read_topic(&c.topics.replay, count, timeout)
        .await
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect()
}

/// Runs the real binary with this test's topics, group and broker.
async fn cli(c: &Config, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mgpass-webhooks"));
    cmd.arg("--bootstrap-servers")
        .arg(&c.kafka.bootstrap_servers);
    for (setting, topic) in c.topics.all() {
        cmd.arg("--set").arg(format!("{setting}={topic}"));
    }
    cmd.arg("--set")
        .arg(format!("kafka.group_id={}", c.kafka.group_id))
        .arg("--set")
        .arg("log.level=warn")
        .args(args);
    cmd.stdin(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run the binary"))
        .await
        .unwrap();
    eprintln!(
        "$ mgpass-webhooks {}\n{}{}-- exit {:?}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn select(f: impl FnOnce(&mut SelectorArgs)) -> SelectorArgs {
    let mut s = SelectorArgs::default();
    f(&mut s);
    s
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_then_dry_run_then_replay_delivers_with_the_same_id_and_four_fresh_attempts() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("flow", &receiver).await;
    receiver.set_behaviour("/down", Behaviour::Status(500));
    receiver.set_secret("/down", SECRET);
    put_subs(
        &c,
        &[sub("down", &receiver.url("/down"), &["*"], None, true)],
    )
    .await;
    testkit::produce_all(
        &testkit::producer(),
        &c.topics.events,
        &[(Some("u1".into()), Some(testkit::event_json(PTS, "u1")))],
    )
    .await;
    let running = start(&c);
    // Four attempts at 0, 1, 6 and 31 s, then the failed record.
    let failed = testkit::read_topic(&c.topics.failed, 1, Duration::from_secs(60)).await;
    assert_eq!(failed.len(), 1, "the delivery failed");
    let failed_task: DeliveryTask = serde_json::from_slice(failed[0].payload().unwrap()).unwrap();
    let id = failed_task.delivery_id.clone();
    assert_eq!(failed_task.attempt, 4);
    assert_eq!(failed_task.last_outcome.as_deref(), Some("http_error"));
    assert!(
        failed_task.failed_at_ms.is_some(),
        "failed records carry failed_at"
    );
    assert_eq!(failed_task.client_id, Some(None), "the event had no client");

    let list = cli(&c, &["failed", "list", "--subscription", "down"]).await;
    assert!(list.status.success());
    let text = stdout(&list);
    assert!(text.contains(&id) && text.contains("http_error"), "{text}");
    assert!(text.contains("1 failed deliveries"), "{text}");

    let dry = cli(&c, &["replay", "--subscription", "down", "--dry-run"]).await;
    assert!(dry.status.success());
    let text = stdout(&dry);
    assert!(text.contains("would replay 1:"), "{text}");
    assert!(text.contains("would skip 0:"), "{text}");
    assert!(text.contains(&id), "the plan names the first ids: {text}");
    assert!(text.contains("dry run: nothing produced"), "{text}");
    assert!(
        replay_topic(&c, 1, Duration::from_secs(3)).await.is_empty(),
        "a dry run produces nothing"
    );

    // The partner recovers halfway: the replay's first three attempts fail, the fourth succeeds.
    receiver.set_behaviour("/down", Behaviour::Sequence(vec![500, 500, 500]));
    let run = cli(&c, &["replay", "--subscription", "down"]).await;
    assert!(run.status.success());
    let text = stdout(&run);
    assert!(text.contains("produced 1 of 1"), "{text}");
    let run_id = text
        .split_whitespace()
        .find(|w| w.starts_with("rpl_"))
        .unwrap()
        .trim_end_matches(':')
        .to_string();

    let got = receiver.wait_for("/down", 8, Duration::from_secs(90)).await;
    assert_eq!(got.len(), 8, "4 original and 4 replayed attempts");
    let ids: BTreeSet<_> = got
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([id.as_str()]),
        "the same X-Webhook-Id throughout"
    );
    let attempts: Vec<_> = got
        .iter()
        .map(|r| r.header("x-webhook-attempt").unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3", "4", "1", "2", "3", "4"]);
    assert!(got.iter().all(|r| r.signature_valid == Some(true)));
    let gaps: Vec<f64> = got[4..]
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    eprintln!("replayed attempts' gaps: {gaps:?}");
    for (gap, planned) in gaps.iter().zip([1.0, 5.0, 25.0]) {
        assert!(*gap >= planned && *gap < planned + 3.0, "gaps {gaps:?}");
    }

    let log = delivery_log(&c, 8, Duration::from_secs(30)).await;
    let replayed: Vec<_> = log.iter().filter(|l| l.replay.is_some()).collect();
    assert_eq!(replayed.len(), 4, "{log:?}");
    let outcomes: Vec<_> = replayed
        .iter()
        .map(|l| (l.attempt, l.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, "http_error"),
            (2, "http_error"),
            (3, "http_error"),
            (4, "success")
        ]
    );
    for l in &replayed {
        let m: &ReplayMarker = l.replay.as_ref().unwrap();
        assert_eq!(m.run_id, run_id);
        assert_eq!(
            (m.failed.partition, m.failed.offset),
            (failed[0].partition(), failed[0].offset()),
            "the marker names the failed record"
        );
        assert_eq!(l.delivery_id, id);
    }

    // The same replay again: nothing re-injected, and it says so.
    let again = cli(&c, &["replay", "--subscription", "down"]).await;
    assert!(again.status.success());
    let text = stdout(&again);
    assert!(
        text.contains("nothing to replay: 1 already replayed since they failed"),
        "{text}"
    );
    assert!(text.contains("already_replayed"), "{text}");
    assert_eq!(replay_topic(&c, 2, Duration::from_secs(3)).await.len(), 1);
    let list = cli(&c, &["failed", "list", "--delivery-id", &id]).await;
    assert!(
        stdout(&list).contains(&run_id),
        "failed list names the replay run"
    );

    let show = cli(
        &c,
        &["deliveries", "show", "--delivery-id", &id, "--since", "10m"],
    )
    .await;
    assert!(show.status.success());
    let text = stdout(&show);
    assert!(text.contains("8 attempts"), "{text}");
    assert_eq!(text.matches(&run_id).count(), 4, "{text}");
    let none = cli(&c, &["deliveries", "show", "--delivery-id", "dlv_nope"]).await;
    assert!(!none.status.success(), "an unknown delivery is an error");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no delivery-log records"));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_selector_selects_exactly_what_it_should() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("select", &receiver).await;
    put_subs(
        &c,
        &[
            sub("sub_a", &receiver.url("/a"), &["*"], None, true),
            sub("sub_b", &receiver.url("/b"), &["*"], None, true),
        ],
    )
    .await;
    let now = mgpass_webhooks::delivery::now_ms();
    let h = 3_600_000;
    let tasks = [
        failed_task("dlv_a", "sub_a", PTS, "http_error", now - 3 * h, None),
        failed_task(
            "dlv_b",
            "sub_a",
            "cashback.processed",
            "timeout",
            now - 2 * h,
            None,
        ),
        failed_task("dlv_c", "sub_b", PTS, "timeout", now - h, None),
        failed_task(
            "dlv_d",
            "sub_b",
            "rewards.tier_promoted",
            "connect_error",
            now - 600_000,
            None,
        ),
    ];
    produce_tasks(&c.topics.failed, &tasks).await;
    let at = |t: i64| mgpass_webhooks::delivery::rfc3339_ms(t);
    #[rustfmt::skip]
    let cases: Vec<(SelectorArgs, &[&str], &str)> = vec![
        (select(|_| {}), &["dlv_a", "dlv_b", "dlv_c", "dlv_d"], "nothing narrows"),
        (select(|s| s.subscriptions = strings(&["sub_a"])), &["dlv_a", "dlv_b"], "--subscription"),
        (select(|s| s.subscriptions = strings(&["sub_a", "sub_b"])), &["dlv_a", "dlv_b", "dlv_c", "dlv_d"], "two subscriptions"),
        (select(|s| s.event_types = strings(&[PTS])), &["dlv_a", "dlv_c"], "--event-type"),
        (select(|s| s.delivery_ids = strings(&["dlv_c", "dlv_d"])), &["dlv_c", "dlv_d"], "--delivery-id"),
        (select(|s| s.reasons = strings(&["timeout"])), &["dlv_b", "dlv_c"], "--reason"),
        (select(|s| s.since = Some(now - 90 * 60_000)), &["dlv_c", "dlv_d"], "--since 90 min"),
        (select(|s| s.until = Some(now - h)), &["dlv_a", "dlv_b"], "--until is exclusive"),
        (select(|s| { s.since = Some(now - 150 * 60_000); s.until = Some(now - 30 * 60_000) }), &["dlv_b", "dlv_c"], "a window"),
        (select(|s| { s.subscriptions = strings(&["sub_b"]); s.reasons = strings(&["timeout"]) }), &["dlv_c"], "AND across flags"),
        (select(|s| s.subscriptions = strings(&["sub_x"])), &[], "no match"),
    ];
    for (selector, expected, name) in &cases {
        let read = read_failed(&c, selector).await.unwrap();
        let mut got: Vec<_> = read
            .selected
            .iter()
            .map(|r| r.task.delivery_id.as_str())
            .collect();
        got.sort();
        assert_eq!(&got, expected, "case {name}: {}", selector.describe());
        if name.starts_with("--since") {
            assert_eq!(
                read.stats.records, 2,
                "--since starts at the offsets for the time instead of reading everything"
            );
        }
    }
    // The same selectors on the command line, with a replay dry run's counts.
    let since = at(now - 90 * 60_000);
    let dry = cli(
        &c,
        &[
            "replay",
            "--dry-run",
            "--since",
            &since,
            "--reason",
            "timeout",
        ],
    )
    .await;
    assert!(dry.status.success());
    let text = stdout(&dry);
    assert!(text.contains("would replay 1:"), "{text}");
    assert!(
        text.contains("sub_b") && text.contains("dlv_c") && !text.contains("dlv_d"),
        "{text}"
    );
    let dry = cli(&c, &["replay", "--dry-run", "--event-type", PTS]).await;
    let text = stdout(&dry);
    assert!(text.contains("would replay 2:"), "{text}");
    // No selector: refused unless --all; a bad value names the flag.
    let none = cli(&c, &["replay"]).await;
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("--all"));
    let err = replay::run(&c, &ReplayArgs::default(), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<UsageError>().is_some(), "{err:#}");
    let bad = cli(&c, &["failed", "list", "--reason", "timout"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--reason"));
    let bad = cli(&c, &["failed", "list", "--since", "yesterday"]).await;
    assert_eq!(bad.status.code(), Some(2));
    let all = cli(&c, &["replay", "--all", "--dry-run"]).await;
    assert!(stdout(&all).contains("would replay 4:"));
    assert!(
        replay_topic(&c, 1, Duration::from_secs(2)).await.is_empty(),
        "dry runs produced nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_deleted_disabled_or_rescoped_subscriptions_are_skipped_with_their_outcome() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("skips", &receiver).await;
    put_subs(
        &c,
        &[
            sub("ok", &receiver.url("/ok"), &["*"], None, true),
            sub("gone", &receiver.url("/gone"), &["*"], None, true),
            (Some("gone".into()), None),
            sub("off", &receiver.url("/off"), &["*"], None, false),
            sub(
                "narrow",
                &receiver.url("/narrow"),
                &["cashback.processed"],
                None,
                true,
            ),
            sub(
                "scoped",
                &receiver.url("/scoped"),
                &[PTS],
                Some("app2"),
                true,
            ),
        ],
    )
    .await;
    let now = mgpass_webhooks::delivery::now_ms();
    let tasks: Vec<_> = ["ok", "gone", "off", "narrow", "scoped"]
        .iter()
        .map(|s| {
            failed_task(
                &format!("dlv_{s}"),
                s,
                PTS,
                "timeout",
                now - 60_000,
                Some("app1"),
            )
        })
        .collect();
    produce_tasks(&c.topics.failed, &tasks).await;
    let running = start(&c);

    let mut out = Vec::new();
    let dry = replay::run(
        &c,
        &ReplayArgs {
            all: true,
            dry_run: true,
            ..ReplayArgs::default()
        },
        &mut out,
    )
    .await
    .unwrap();
    let expected_skips = BTreeMap::from([
        ("subscription_deleted", 1),
        ("subscription_disabled", 1),
        ("subscription_mismatch", 2),
    ]);
    assert_eq!(
        dry.skipped,
        expected_skips,
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!((dry.planned, dry.produced), (1, 0));
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("subscription_mismatch") && text.contains("dlv_narrow"),
        "{text}"
    );

    let done = replay::run(
        &c,
        &ReplayArgs {
            all: true,
            ..ReplayArgs::default()
        },
        &mut Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(done.skipped, expected_skips);
    assert_eq!(done.produced, 1);
    let got = receiver.wait_for("/ok", 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].header("x-webhook-id"), Some("dlv_ok"));

    // The processor applies the same rule to replay records that bypass the job.
    let mut bypass: Vec<_> = tasks[1..].to_vec();
    for t in &mut bypass {
        t.replay = Some(ReplayMarker {
            run_id: "rpl_by_hand".into(),
            failed: SourceRef {
                topic: c.topics.failed.clone(),
                partition: 0,
                offset: 0,
                timestamp_ms: None,
            },
            replayed_at_ms: now,
        });
    }
    produce_tasks(&c.topics.replay, &bypass).await;
    let log = delivery_log(&c, 5, Duration::from_secs(30)).await;
    let mut outcomes: Vec<_> = log
        .iter()
        .map(|l| (l.delivery_id.as_str(), l.attempt, l.outcome.as_str()))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("dlv_gone", 1, "subscription_deleted"),
            ("dlv_narrow", 1, "subscription_mismatch"),
            ("dlv_off", 1, "subscription_disabled"),
            ("dlv_ok", 1, "success"),
            ("dlv_scoped", 1, "subscription_mismatch"),
        ]
    );
    assert!(
        log.iter().all(|l| l.replay.is_some()),
        "every record carries its marker"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "only the matching one was sent"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_or_rescoped_subscription_stops_a_pending_retry() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("narrow", &receiver).await;
    // Slow failures, so the subscription change is applied well before the 1 s retry.
    receiver.set_behaviour("/narrow", Behaviour::Delay(Duration::from_millis(800), 500));
    receiver.set_behaviour(
        "/rescoped",
        Behaviour::Delay(Duration::from_millis(800), 500),
    );
    put_subs(
        &c,
        &[
            sub("narrow", &receiver.url("/narrow"), &["*"], None, true),
            sub(
                "rescoped",
                &receiver.url("/rescoped"),
                &[PTS],
                Some("app1"),
                true,
            ),
        ],
    )
    .await;
    let mut event: serde_json::Value =
        serde_json::from_slice(&testkit::event_json(PTS, "u1")).unwrap();
    event["client_id"] = "app1".into();
    testkit::produce_all(
        &testkit::producer(),
        &c.topics.events,
        &[(Some("u1".into()), Some(event.to_string().into_bytes()))],
    )
    .await;
    let running = start(&c);
    receiver
        .wait_for("/narrow", 1, Duration::from_secs(30))
        .await;
    receiver
        .wait_for("/rescoped", 1, Duration::from_secs(30))
        .await;
    put_subs(
        &c,
        &[
            sub(
                "narrow",
                &receiver.url("/narrow"),
                &["cashback.processed"],
                None,
                true,
            ),
            sub(
                "rescoped",
                &receiver.url("/rescoped"),
                &[PTS],
                Some("app2"),
                true,
            ),
        ],
    )
    .await;
    let log = delivery_log(&c, 4, Duration::from_secs(30)).await;
    let mut outcomes: Vec<_> = log
        .iter()
        .map(|l| (l.subscription_id.as_str(), l.attempt, l.outcome.as_str()))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("narrow", 1, "http_error"),
            ("narrow", 2, "subscription_mismatch"),
            ("rescoped", 1, "http_error"),
            ("rescoped", 2, "subscription_mismatch"),
        ]
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(receiver.received().len(), 2, "no attempt after the change");
    assert!(
        testkit::read_topic(&c.topics.failed, 1, Duration::from_secs(2))
            .await
            .is_empty(),
        "an ended delivery is not a failed one"
    );
    running.stop().await;
}

/// 20 MB of 25-s tier tasks (more than the 16 MiB librdkafka prefetches per consumer), all due
/// at once 4 s ahead: the tier pauses the partitions whose heads are not yet due, resumes them
/// once they are, fetches the rest again and delivers every task once, none early, with the
/// signature the guide verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_full_of_large_tasks_due_at_once_delivers_every_one_once_and_none_early() {
    const N: usize = 200;
    const PAD: usize = 100_000;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("hold", &receiver).await;
    receiver.set_secret("/big", SECRET);
    put_subs(&c, &[sub("big", &receiver.url("/big"), &[PTS], None, true)]).await;
    let running = start(&c);
    let due = chrono::Utc::now().timestamp_millis() + 4_000;
    let pad = "x".repeat(PAD);
    let tasks: Vec<DeliveryTask> = (0..N)
        .map(|n| {
            let mut t = failed_task(&format!("dlv_big_{n}"), "big", PTS, "http_error", due, None);
            t.body = format!(
                r#"{{"event_type":"{PTS}","data":{{"user_id":"u{n}","note":"{pad}"}},"timestamp":"2025-01-15T10:30:00.000Z"}}"#
            )
            .into();
            t.failed_at_ms = None;
            t
        })
        .collect();
    produce_tasks(&c.topics.retry_25s, &tasks).await;
    let got = receiver.wait_for("/big", N, Duration::from_secs(60)).await;
    let ids: BTreeSet<&str> = got
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap())
        .collect();
    assert_eq!((got.len(), ids.len()), (N, N), "each task delivered once");
    assert!(got
        .iter()
        .all(|r| r.signature_valid == Some(true) && r.body.len() > PAD));
    let first = got.iter().map(|r| r.at).min().unwrap();
    let wall_first = chrono::Utc::now().timestamp_millis() - first.elapsed().as_millis() as i64;
    assert!(
        wall_first >= due - 50,
        "delivered {} ms early",
        due - wall_first
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_replay_of_20000_failed_records_is_paced_and_all_are_delivered() {
    const N: usize = 20_000;
    const RATE: u32 = 2_000;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("bulk", &receiver).await;
    put_subs(
        &c,
        &[sub("bulk", &receiver.url("/bulk"), &["*"], None, true)],
    )
    .await;
    let now = mgpass_webhooks::delivery::now_ms();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            failed_task(
                &format!("dlv_bulk_{i:05}"),
                "bulk",
                PTS,
                "timeout",
                now - 60_000,
                None,
            )
        })
        .collect();
    produce_tasks(&c.topics.failed, &tasks).await;
    let running = start(&c);
    let started = Instant::now();
    let rate = RATE.to_string();
    let run = cli(&c, &["replay", "--subscription", "bulk", "--rate", &rate]).await;
    let took = started.elapsed();
    assert!(run.status.success());
    assert!(stdout(&run).contains(&format!("produced {N} of {N}")));
    let progress = String::from_utf8_lossy(&run.stderr);
    assert!(
        progress
            .lines()
            .filter(|l| l.starts_with("replay progress:"))
            .count()
            >= 1,
        "progress lines when not on a terminal: {progress}"
    );
    let ideal = Duration::from_secs_f64(N as f64 / RATE as f64);
    eprintln!("replay of {N} at --rate {RATE} took {took:?} (ideal {ideal:?})");
    assert!(
        took >= ideal - Duration::from_millis(500),
        "{took:?}: not paced"
    );
    // Per second of produce time, no more than the rate (plus the batch at the edge).
    let records = testkit::read_topic(&c.topics.replay, N, Duration::from_secs(60)).await;
    assert_eq!(records.len(), N);
    let times: Vec<i64> = records
        .iter()
        .map(|m| m.timestamp().to_millis().unwrap())
        .collect();
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    let mut per_second: BTreeMap<i64, u32> = BTreeMap::new();
    for t in &times {
        *per_second.entry((t - first) / 1000).or_default() += 1;
    }
    eprintln!("replay records per second: {per_second:?}");
    assert!(
        last - first >= ideal.as_millis() as i64 - 600,
        "spread over {} ms",
        last - first
    );
    assert!(
        per_second.values().all(|n| *n <= RATE + RATE / 10),
        "{per_second:?}"
    );
    // Every one is delivered, each under its own delivery id.
    let deadline = Instant::now() + Duration::from_secs(120);
    while receiver.received().len() < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), N, "every replayed delivery arrived");
    assert!(ids.contains("dlv_bulk_00000") && ids.contains("dlv_bulk_19999"));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_admin_shows_fingerprints_reads_stdin_and_refuses_weak_secrets() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("admin", &receiver).await;
    let secret = "stdin-secret-abcdefghijklmnop";
    let url = receiver.url("/admin");
    // --secret-stdin, with the newline `echo` adds.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mgpass-webhooks"));
    cmd.arg("-b").arg(&c.kafka.bootstrap_servers);
    for (setting, topic) in c.topics.all() {
        cmd.arg("--set").arg(format!("{setting}={topic}"));
    }
    cmd.args([
        "subscriptions",
        "put",
        "--id",
        "sub_stdin",
        "--url",
        url.as_str(),
        "--secret-stdin",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let put = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{secret}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let fp =
        mgpass_webhooks::ops::admin::fingerprint(&mgpass_webhooks::secret::Secret::new(secret));
    let text = stdout(&put);
    assert!(text.contains(&fp) && !text.contains(secret), "{text}");
    // The record on the topic holds the secret without the newline.
    let recs = testkit::read_topic(&c.topics.subscriptions, 1, Duration::from_secs(10)).await;
    let v: serde_json::Value = serde_json::from_slice(recs[0].payload().unwrap()).unwrap();
    assert_eq!(v["secret"], secret);

    for args in [
        vec!["subscriptions", "get", "--id", "sub_stdin"],
        vec!["subscriptions", "list"],
    ] {
        let out = cli(&c, &args).await;
        assert!(out.status.success());
        let text = stdout(&out);
        assert!(
            text.contains(&format!("\"secret_fingerprint\":\"{fp}\"")),
            "{text}"
        );
        assert!(
            !text.contains(secret) && !text.contains("\"secret\""),
            "{text}"
        );
    }
    let weak = cli(
        &c,
        &[
            "subscriptions",
            "put",
            "--id",
            "weak",
            "--url",
            url.as_str(),
            "--secret",
            "short",
        ],
    )
    .await;
    assert_eq!(weak.status.code(), Some(2));
    let err = String::from_utf8_lossy(&weak.stderr);
    assert!(
        err.contains("5 bytes") && err.contains("at least 24"),
        "{err}"
    );
    let generated = cli(
        &c,
        &["subscriptions", "put", "--id", "gen", "--url", url.as_str()],
    )
    .await;
    assert!(generated.status.success());
    assert!(stdout(&generated).contains("secret: whsec_"));
    let list = cli(&c, &["subscriptions", "list"]).await;
    let text = stdout(&list);
    assert!(
        text.contains("\"id\":\"gen\"") && !text.contains("weak"),
        "{text}"
    );
}
