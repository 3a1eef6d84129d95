//! The processor binary as a child process: a kill -9 mid-stream loses nothing (every expected
//! delivery arrives at least once after a restart; the duplicate count is reported), a SIGTERM
//! finishes in-flight work, commits and exits 0, and a second signal exits at once.

use mgpass_testkit as testkit;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use mgpass_webhooks::config::Config;
use testkit::process::{Options, Processor};
use testkit::receiver::{Behaviour, Receiver};

/// Starts `mgpass-webhooks run` with the test's topics, group and the receiver's CA.
fn spawn(c: &Config, receiver: &Receiver, extra: &[&str]) -> Processor {
    spawn_with_env(c, receiver, extra, &[])
}

fn spawn_with_env(
    c: &Config,
    receiver: &Receiver,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Processor {
    let mut c = c.clone();
    c.admin.listen = "127.0.0.1:0".into();
    c.http.request_timeout_ms = 5000;
    c.http.ca_bundle = Some(receiver.ca_file());
    let options = Options {
        sets: extra.iter().map(|s| s.to_string()).collect(),
        rust_log: Some("warn".into()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    };
    Processor::spawn(
        Path::new(env!("CARGO_BIN_EXE_mgpass-webhooks")),
        &c,
        options,
    )
    .expect("start the processor binary")
}

async fn wait_exit(child: &mut Processor, within: Duration) -> std::process::ExitStatus {
    child.wait_exit(within).await.unwrap()
}

fn signal(child: &Processor, sig: &str) {
    child.signal(sig).unwrap();
}

fn sub(id: &str, url: &url::Url, secret: &str) -> (Option<String>, Option<Vec<u8>>) {
    (
        Some(id.to_string()),
        Some(testkit::subscription_json(
            id,
            url.as_str(),
            &["*"],
            None,
            secret,
        )),
    )
}

/// (path, user id) of each received request.
fn pairs(receiver: &Receiver) -> Vec<(String, String)> {
    receiver
        .received()
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            (
                r.path.clone(),
                body["data"]["user_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_every_expected_webhook_at_least_once() {
    let receiver = Receiver::start(Behaviour::Delay(Duration::from_millis(20), 200)).await;
    let c = testkit::config("kill9");
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    let paths = ["/a", "/b", "/c"];
    let subs: Vec<_> = paths
        .iter()
        .map(|p| {
            receiver.set_secret(p, "s");
            sub(&p[1..], &receiver.url(p), "s")
        })
        .collect();
    testkit::produce_all(&producer, &c.topics.subscriptions, &subs).await;
    let events: Vec<_> = (0..1_000)
        .map(|i| {
            let user = format!("u{i:04}");
            (
                Some(user.clone()),
                Some(testkit::event_json("rewards.points_awarded", &user)),
            )
        })
        .collect();
    testkit::produce_all(&producer, &c.topics.events, &events).await;
    let expected = events.len() * paths.len();

    let mut first = spawn(
        &c,
        &receiver,
        &[
            "delivery.max_in_flight=64",
            "delivery.max_in_flight_per_endpoint=64",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.received().len() < expected / 3 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill(); // SIGKILL, reaped
    let at_kill = receiver.received().len();
    assert!(
        at_kill < expected,
        "the kill must land mid-stream ({at_kill} of {expected})"
    );

    let mut second = spawn(&c, &receiver, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let distinct: HashSet<_> = pairs(&receiver).into_iter().collect();
        if distinct.len() == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} deliveries arrived after the restart",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&second, "-TERM");
    let status = wait_exit(&mut second, Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");

    let all = receiver.received();
    assert!(all.iter().all(|r| r.signature_valid == Some(true)));
    // Duplicates carry the delivery id of the original.
    let mut ids: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for (r, pair) in all.iter().zip(pairs(&receiver)) {
        ids.entry(pair)
            .or_default()
            .insert(r.header("x-webhook-id").unwrap().to_string());
    }
    assert!(
        ids.values().all(|s| s.len() == 1),
        "a delivery changed its id across the crash"
    );
    let report = format!(
        "kill -9 after {at_kill} of {expected} deliveries: {} requests in all, {} duplicates\n",
        all.len(),
        all.len() - expected
    );
    eprint!("{report}");
    // scripts/test.sh prints the reports after the run, where a passing test's output is hidden.
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kill9-report.txt"),
        report,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_commits_and_exits_0() {
    let receiver = Receiver::start(Behaviour::Delay(Duration::from_secs(2), 200)).await;
    let c = testkit::config("sigterm");
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[sub("slow", &receiver.url("/slow"), "s")],
    )
    .await;
    let events: Vec<_> = (0..40)
        .map(|i| {
            let user = format!("u{i}");
            (
                Some(user.clone()),
                Some(testkit::event_json("rewards.redeemed", &user)),
            )
        })
        .collect();
    testkit::produce_all(&producer, &c.topics.events, &events).await;

    let mut child = spawn(&c, &receiver, &["delivery.shutdown_deadline_secs=20"]);
    let arrived = receiver
        .wait_for("/slow", 40, Duration::from_secs(60))
        .await;
    assert_eq!(arrived.len(), 40, "all 40 requests in flight");
    let asked = Instant::now();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(25)).await;
    assert!(
        status.success(),
        "graceful shutdown must exit 0: {status:?}"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "exited before its in-flight requests (2 s each) could finish"
    );
    // Everything was committed: a restart in the same group re-delivers nothing.
    let mut again = spawn(&c, &receiver, &[]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    signal(&again, "-TERM");
    let status = wait_exit(&mut again, Duration::from_secs(25)).await;
    assert!(status.success());
    assert_eq!(
        receiver.received_on("/slow").len(),
        40,
        "offsets were not committed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let receiver = Receiver::start(Behaviour::Hang).await;
    let c = testkit::config("twice");
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[sub("hang", &receiver.url("/hang"), "s")],
    )
    .await;
    testkit::produce_all(
        &producer,
        &c.topics.events,
        &[(
            Some("u".into()),
            Some(testkit::event_json("rewards.redeemed", "u")),
        )],
    )
    .await;
    let mut child = spawn(
        &c,
        &receiver,
        &[
            "delivery.shutdown_deadline_secs=60",
            "http.request_timeout_ms=60000",
        ],
    );
    receiver.wait_for("/hang", 1, Duration::from_secs(60)).await;
    signal(&child, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for in-flight work"
    );
    let asked = Instant::now();
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(5)).await;
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(status.code(), Some(130));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_panic_makes_the_binary_exit_non_zero_promptly_and_loses_nothing() {
    // A bug in record handling (the debug build's hook panics on one event type) must stop the
    // whole process with a failure status, never leave a zombie answering /readyz while
    // nothing consumes; the record is not committed, so a restart delivers it.
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = testkit::config("panicbin");
    testkit::setup_topics(&c).await;
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[sub("all", &receiver.url("/all"), "s")],
    )
    .await;
    testkit::produce_all(
        &producer,
        &c.topics.events,
        &[(
            Some("u1".into()),
            Some(testkit::event_json("test.panic", "u1")),
        )],
    )
    .await;
    let started = Instant::now();
    let mut child = spawn_with_env(
        &c,
        &receiver,
        &[],
        &[("MGPASS_DEBUG_PANIC_ON_EVENT_TYPE", "test.panic")],
    );
    let status = wait_exit(&mut child, Duration::from_secs(60)).await;
    let took = started.elapsed();
    eprintln!("exited with {status} {took:?} after start (table load included)");
    assert!(!status.success(), "a panic must fail the process: {status}");
    assert!(status.code().is_some(), "an exit, not a signal: {status}");
    assert!(took < Duration::from_secs(30), "not prompt: {took:?}");
    assert!(receiver.received().is_empty(), "nothing was delivered");
    // Without the hook the same record is delivered: it was never committed.
    let mut again = spawn(&c, &receiver, &[]);
    let got = receiver.wait_for("/all", 1, Duration::from_secs(60)).await;
    assert_eq!(
        got.len(),
        1,
        "the record that panicked is delivered after a restart"
    );
    signal(&again, "-TERM");
    assert!(wait_exit(&mut again, Duration::from_secs(25))
        .await
        .success());
}
