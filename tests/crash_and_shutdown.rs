//! The processor binary as a child process: a kill -9 mid-stream loses nothing (every expected
//! delivery arrives at least once after a restart; the duplicate count is reported), a SIGTERM
//! finishes in-flight work, commits and exits 0, and a second signal exits at once.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{Behaviour, Receiver};
use mgpass_webhooks::config::Config;

/// Starts `mgpass-webhooks run` with the test's topics, group and the receiver's CA.
fn spawn(c: &Config, receiver: &Receiver, extra: &[&str]) -> Child {
    let t = &c.topics;
    let mut args: Vec<String> = vec![
        "--bootstrap-servers".into(),
        c.kafka.bootstrap_servers.clone(),
    ];
    let settings = [
        ("kafka.group_id", c.kafka.group_id.as_str()),
        ("topics.events", &t.events),
        ("topics.subscriptions", &t.subscriptions),
        ("topics.retry_1s", &t.retry_1s),
        ("topics.retry_5s", &t.retry_5s),
        ("topics.retry_25s", &t.retry_25s),
        ("topics.replay", &t.replay),
        ("topics.delivery_log", &t.delivery_log),
        ("topics.failed", &t.failed),
        ("topics.invalid", &t.invalid),
        ("admin.listen", "127.0.0.1:0"),
        ("http.request_timeout_ms", "5000"),
        ("http.allow_private", "127.0.0.0/8"),
    ];
    for (k, v) in settings {
        args.push("--set".into());
        args.push(format!("{k}={v}"));
    }
    args.push("--set".into());
    args.push(format!("http.ca_bundle={}", receiver.ca_file().display()));
    for e in extra {
        args.push("--set".into());
        args.push(e.to_string());
    }
    args.push("run".into());
    Command::new(env!("CARGO_BIN_EXE_mgpass-webhooks"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the processor binary")
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the processor did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sub(id: &str, url: &url::Url, secret: &str) -> (Option<String>, Option<Vec<u8>>) {
    (
        Some(id.to_string()),
        Some(common::subscription_json(id, url.as_str(), &["*"], secret)),
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
    let c = common::config("kill9");
    common::setup_topics(&c).await;
    let producer = common::producer();
    let paths = ["/a", "/b", "/c"];
    let subs: Vec<_> = paths
        .iter()
        .map(|p| {
            receiver.set_secret(p, "s");
            sub(&p[1..], &receiver.url(p), "s")
        })
        .collect();
    common::produce_all(&producer, &c.topics.subscriptions, &subs).await;
    let events: Vec<_> = (0..1_000)
        .map(|i| {
            let user = format!("u{i:04}");
            (
                Some(user.clone()),
                Some(common::event_json("rewards.points_awarded", &user)),
            )
        })
        .collect();
    common::produce_all(&producer, &c.topics.events, &events).await;
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
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
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
    let c = common::config("sigterm");
    common::setup_topics(&c).await;
    let producer = common::producer();
    common::produce_all(
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
                Some(common::event_json("rewards.redeemed", &user)),
            )
        })
        .collect();
    common::produce_all(&producer, &c.topics.events, &events).await;

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
    let c = common::config("twice");
    common::setup_topics(&c).await;
    let producer = common::producer();
    common::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[sub("hang", &receiver.url("/hang"), "s")],
    )
    .await;
    common::produce_all(
        &producer,
        &c.topics.events,
        &[(
            Some("u".into()),
            Some(common::event_json("rewards.redeemed", "u")),
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
