//! Crashes and the broker, on real brokers with the processor binary as a child process:
//!
//! - three kill -9 restarts of the processor during a 20,000-event run against an endpoint that
//!   fails now and then (and one that always fails): every (event, matching subscription) pair
//!   ends delivered (a 2xx answered by the receiver) or in `webhooks.failed`; duplicates are
//!   counted, reported and bounded (shared broker);
//! - a broker of the test's own killed with -9 for 20 s mid-run and restarted: the processor keeps
//!   running, loses nothing, and `/readyz` answers 503 while the broker is away and 200 again
//!   after;
//! - the same with an outage longer than the producer's `message.timeout.ms` (lowered to 8 s
//!   through `kafka.properties`): still nothing lost, the processor still running.
//!
//! The tests run one at a time (a lock): the machine has two cores and each test is heavy.

use mgpass_testkit as testkit;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mgpass_webhooks::config::Config;
use mgpass_webhooks::delivery::DeliveryTask;
use rdkafka::message::Message;
use testkit::process::{free_port, restartable_port, Options, Processor};
use testkit::receiver::{Behaviour, Receiver};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRET: &str = "a-secret-of-twenty-four-bytes!!";

/// The processor with its admin server on a fixed port, logging to a file of its own.
fn spawn(c: &Config, receiver: &Receiver, name: &str, sets: &[&str]) -> (Processor, u16, PathBuf) {
    let mut c = c.clone();
    let port = free_port().unwrap();
    c.admin.listen = format!("127.0.0.1:{port}");
    c.http.ca_bundle = Some(receiver.ca_file());
    c.http.request_timeout_ms = 5_000;
    c.delivery.shutdown_deadline_secs = 20;
    let log = std::env::temp_dir().join(format!("{}-{name}.log", c.kafka.group_id));
    let p = Processor::spawn(
        Path::new(env!("CARGO_BIN_EXE_mgpass-webhooks")),
        &c,
        Options {
            sets: sets.iter().map(|s| s.to_string()).collect(),
            log: Some(log.clone()),
            rust_log: Some("info".into()),
            ..Options::default()
        },
    )
    .expect("start the processor binary");
    (p, port, log)
}

/// A pair: (subscription id, idempotency key `event_type + user_id + timestamp`).
type Pair = (String, String);

/// Requests answered 2xx so far (cheap: no body is parsed).
fn answered_ok(receiver: &Receiver) -> usize {
    receiver
        .received()
        .iter()
        .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
        .count()
}

fn key_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    format!(
        "{}{}{}",
        v["event_type"].as_str().unwrap(),
        v["data"]["user_id"].as_str().unwrap(),
        v["timestamp"].as_str().unwrap()
    )
}

/// What the receiver saw: 2xx answers per pair and the delivery ids per pair.
struct Seen {
    requests: usize,
    ok: HashMap<Pair, usize>,
    ids: HashMap<Pair, HashSet<String>>,
}

fn seen(receiver: &Receiver) -> Seen {
    let all = receiver.received();
    let mut ok: HashMap<Pair, usize> = HashMap::new();
    let mut ids: HashMap<Pair, HashSet<String>> = HashMap::new();
    for r in &all {
        assert_eq!(
            r.signature_valid,
            Some(true),
            "a bad signature on {}",
            r.path
        );
        let pair = (r.path.trim_start_matches('/').to_string(), key_of(&r.body));
        ids.entry(pair.clone())
            .or_default()
            .insert(r.header("x-webhook-id").unwrap().to_string());
        if r.status.is_some_and(|s| (200..300).contains(&s)) {
            *ok.entry(pair).or_default() += 1;
        }
    }
    Seen {
        requests: all.len(),
        ok,
        ids,
    }
}

/// Follows `topic` on `bootstrap` from the beginning in the background, through broker outages,
/// collecting the (subscription, idempotency key) of every failed record.
fn follow_failed(
    bootstrap: &str,
    topic: &str,
) -> (Arc<Mutex<Vec<Pair>>>, tokio::task::JoinHandle<()>) {
    let consumer = testkit::fixtures::reader_from_beginning(bootstrap, topic);
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let task = tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(m) => {
                    let t: DeliveryTask =
                        serde_json::from_slice(m.payload().expect("a failed record has a value"))
                            .expect("a failed record is a task");
                    sink.lock()
                        .unwrap()
                        .push((t.subscription_id, t.idempotency_key));
                }
                // A broker outage: the client reconnects by itself.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (out, task)
}

/// Waits until every expected pair was delivered or failed; returns the pairs still open.
async fn wait_settled(
    receiver: &Receiver,
    failed: &Mutex<Vec<Pair>>,
    expected: &HashSet<Pair>,
    within: Duration,
    processors: &mut [&mut Processor],
) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for p in processors.iter_mut() {
            p.check_alive().unwrap();
        }
        let s = seen(receiver);
        let failed: HashSet<Pair> = failed.lock().unwrap().iter().cloned().collect();
        let open = expected
            .iter()
            .filter(|p| !s.ok.contains_key(*p) && !failed.contains(*p))
            .count();
        if open == 0 || Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn events(
    users: std::ops::Range<usize>,
    expired_every: usize,
) -> Vec<(Option<String>, Option<Vec<u8>>)> {
    users
        .map(|i| {
            let user = format!("u{i:05}");
            let kind = if i % expired_every == 0 {
                "rewards.tier_promoted"
            } else {
                "rewards.points_awarded"
            };
            (Some(user.clone()), Some(testkit::event_json(kind, &user)))
        })
        .collect()
}

fn key_of_record(record: &(Option<String>, Option<Vec<u8>>)) -> (String, String) {
    let key = key_of(record.1.as_ref().unwrap());
    let v: serde_json::Value = serde_json::from_slice(record.1.as_ref().unwrap()).unwrap();
    (v["event_type"].as_str().unwrap().to_string(), key)
}

/// Subscriptions: `flaky` (every event) on an endpoint failing every 7th request, `down`
/// (`rewards.tier_promoted` only) on one that always answers 503. Returns the expected pairs.
async fn subscribe(
    c: &Config,
    receiver: &Receiver,
    bootstrap: &str,
    records: &[(Option<String>, Option<Vec<u8>>)],
) -> HashSet<Pair> {
    receiver.set_behaviour("/flaky", Behaviour::FailEvery(7, 503));
    receiver.set_behaviour("/down", Behaviour::Status(503));
    let subs: Vec<_> = [
        ("flaky", &["*"][..]),
        ("down", &["rewards.tier_promoted"][..]),
    ]
    .iter()
    .map(|(id, types)| {
        receiver.set_secret(&format!("/{id}"), SECRET);
        (
            Some(id.to_string()),
            Some(testkit::subscription_json(
                id,
                receiver.url(&format!("/{id}")).as_str(),
                types,
                None,
                SECRET,
            )),
        )
    })
    .collect();
    let producer = testkit::fixtures::producer_to(bootstrap, 5).unwrap();
    testkit::produce_all(&producer, &c.topics.subscriptions, &subs).await;
    let mut expected = HashSet::new();
    for r in records {
        let (kind, key) = key_of_record(r);
        expected.insert(("flaky".to_string(), key.clone()));
        if kind == "rewards.tier_promoted" {
            expected.insert(("down".to_string(), key));
        }
    }
    expected
}

fn report(name: &str, text: &str) {
    eprint!("{text}");
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-report.txt")),
        text,
    )
    .unwrap();
}

const EVENTS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_kill_9_restarts_in_20000_events_lose_no_pair_and_duplicates_stay_bounded() {
    let _serial = SERIAL.lock().await;
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = testkit::config("kill9x3");
    testkit::setup_topics(&c).await;
    let records = events(0..EVENTS, 100);
    let expected = subscribe(&c, &receiver, &testkit::bootstrap(), &records).await;
    assert_eq!(expected.len(), EVENTS + EVENTS / 100);
    testkit::produce_all(&testkit::producer(), &c.topics.events, &records).await;
    let (failed, reader) = follow_failed(&testkit::bootstrap(), &c.topics.failed);

    let started = Instant::now();
    // A killed member's partitions wait for its session to expire before they are assigned
    // again (45 s by default); 10 s keeps the test short.
    let sets = ["kafka.properties.session.timeout.ms=10000"];
    let (mut p, _, _) = spawn(&c, &receiver, "p0", &sets);
    let mut kills = Vec::new();
    for (n, fraction) in [(1, 0.2), (2, 0.45), (3, 0.7)] {
        let target = (EVENTS as f64 * fraction) as usize;
        let deadline = Instant::now() + Duration::from_secs(90);
        while answered_ok(&receiver) < target {
            p.check_alive().unwrap();
            assert!(
                Instant::now() < deadline,
                "no progress to {target} before kill {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.kill(); // SIGKILL, reaped
        let at = seen(&receiver).ok.len();
        assert!(at < expected.len(), "kill {n} must land mid-run");
        kills.push(at);
        p = spawn(&c, &receiver, &format!("p{n}"), &sets).0;
    }
    // The `down` pairs need 31 s of retries after their first attempt.
    let open = wait_settled(
        &receiver,
        &failed,
        &expected,
        Duration::from_secs(150),
        &mut [&mut p],
    )
    .await;
    assert_eq!(open, 0, "{open} pairs neither delivered nor failed");
    // Whatever is still to be re-sent arrives within a moment.
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.check_alive().unwrap();
    let elapsed = started.elapsed();
    p.stop(Duration::from_secs(30)).await.unwrap();
    reader.abort();

    let s = seen(&receiver);
    assert!(
        s.ids.values().all(|ids| ids.len() == 1),
        "a pair changed its delivery id across the crashes"
    );
    assert!(
        s.ok.keys().all(|p| expected.contains(p)),
        "a delivery nobody expected"
    );
    let failed: Vec<Pair> = failed.lock().unwrap().clone();
    let failed_set: HashSet<&Pair> = failed.iter().collect();
    let down = expected.iter().filter(|p| p.0 == "down").count();
    assert!(
        expected
            .iter()
            .filter(|p| p.0 == "down")
            .all(|p| failed_set.contains(p)),
        "every pair of the always-failing endpoint is in webhooks.failed"
    );
    // Duplicates: 2xx answers beyond the first per pair, plus failed records beyond the first.
    let dup_delivered: usize = s.ok.values().map(|n| n - 1).sum();
    let dup_failed = failed.len() - failed_set.len();
    let flaky_failed = failed_set.iter().filter(|p| p.0 == "flaky").count();
    let text = format!(
        "kill -9 ×3 (after {kills:?} delivered) in {EVENTS} events: {} pairs, {} delivered, \
         {} failed ({down} always-failing, {flaky_failed} flaky), {} requests, {dup_delivered} \
         re-delivered after a 2xx ({:.2} %), {dup_failed} duplicate failed records, {:.0} s\n",
        expected.len(),
        s.ok.len(),
        failed_set.len(),
        s.requests,
        dup_delivered as f64 * 100.0 / expected.len() as f64,
        elapsed.as_secs_f64()
    );
    report("kill9x3", &text);
    // The bound: a crash re-does what was read past the last commit. The event loop holds at
    // most MAX_OUTSTANDING_RECORDS (4096) records started and not finished, and their work ends
    // nearly in the order it began (the receiver answers at once), so what is uncommitted at a
    // kill is about that window plus 200 ms of completions (the commit interval); each event
    // matches one `*` subscription (1 % two). Three kills: at most 3 × 4096 re-deliveries.
    let bound = 3 * mgpass_webhooks::processor::MAX_OUTSTANDING_RECORDS;
    assert!(
        dup_delivered + dup_failed <= bound,
        "{dup_delivered} re-deliveries and {dup_failed} duplicate failed records exceed {bound}"
    );
}

/// A single-node Kafka of the test's own (scripts/kafka.sh on a temporary data dir and free
/// ports), killed with -9 and started again by the test; stopped when dropped, also on failure.
struct OwnBroker {
    dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

impl OwnBroker {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
    }

    fn run(&self, action: &str) -> std::process::ExitStatus {
        Command::new("bash")
            .arg(Self::script())
            .arg(action)
            .env("KAFKA_DATA_DIR", self.dir.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")
            .status()
            .expect("running scripts/kafka.sh")
    }

    fn start_new() -> OwnBroker {
        let b = OwnBroker {
            dir: tempfile::tempdir().unwrap(),
            port: restartable_port().unwrap(),
            controller_port: restartable_port().unwrap(),
        };
        b.start();
        b
    }

    /// Starts it (again) on the same data dir and ports; returns how long that took.
    fn start(&self) -> Duration {
        let t = Instant::now();
        let status = self.run("start");
        assert!(
            status.success(),
            "our own Kafka broker did not start (scripts/kafka.sh start: {status}); it is required"
        );
        t.elapsed()
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("kafka.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// kill -9 of the broker's JVM (the pid scripts/kafka.sh recorded), waiting until it is gone.
    fn kill9(&self) {
        let pid = self.pid().expect("the broker's pid file");
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 {pid}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "broker {pid} survived kill -9");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let pid = self.pid();
        let _ = self.run("stop");
        if let Some(pid) = pid {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// One `/readyz` probe: time since the broker was killed, and the status (`None`: no answer).
type Poll = (Duration, Option<u16>);

/// `/readyz`'s status, `None` when it did not answer.
async fn readyz(http: &reqwest::Client, port: u16) -> Option<u16> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

/// Polls `/readyz` until it answers `status`, failing after `within`; returns how long it took.
async fn wait_readyz(http: &reqwest::Client, port: u16, status: u16, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if readyz(http, port).await == Some(status) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "/readyz did not answer {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The broker killed with -9 for `outage` once a quarter of the first 4,000 events were
/// delivered, then started again, and 2,000 more events produced: the processor stays up,
/// `/readyz` answers 503 from the kill until the broker is back and 200 after, and every pair
/// ends delivered or failed. `expect_in_log` must appear in the processor's log.
async fn broker_outage(name: &str, outage: Duration, sets: &[&str], expect_in_log: Option<&str>) {
    // 4,000 events before the outage, 2,000 more once the broker is back.
    const N: usize = 6_000;
    const BEFORE: usize = 4_000;
    let broker = OwnBroker::start_new();
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut c = testkit::config(name);
    c.kafka.bootstrap_servers = broker.bootstrap();
    testkit::setup_topics(&c).await;
    let records = events(0..N, 100);
    let expected = subscribe(&c, &receiver, &broker.bootstrap(), &records).await;
    let producer = testkit::fixtures::producer_to(&broker.bootstrap(), 5).unwrap();
    testkit::produce_all(&producer, &c.topics.events, &records[..BEFORE]).await;
    let (failed, reader) = follow_failed(&broker.bootstrap(), &c.topics.failed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();

    let (mut p, port, log) = spawn(&c, &receiver, "p", sets);
    p.wait_ready(Duration::from_secs(60)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered_ok(&receiver) < BEFORE / 4 {
        p.check_alive().unwrap();
        assert!(Instant::now() < deadline, "no progress before the outage");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // /readyz every 100 ms from the kill on: (time since the kill, status).
    let polls: Arc<Mutex<Vec<Poll>>> = Arc::default();
    broker.kill9();
    let killed = Instant::now();
    let poller = {
        let (polls, http) = (polls.clone(), http.clone());
        tokio::spawn(async move {
            loop {
                let status = readyz(&http, port).await;
                polls.lock().unwrap().push((killed.elapsed(), status));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let at_kill = seen(&receiver).ok.len();
    assert!(at_kill < expected.len(), "the outage must land mid-run");
    wait_readyz(&http, port, 503, outage).await;
    // Not ready for the rest of the outage, while the processor stays up.
    while killed.elapsed() < outage {
        p.check_alive().unwrap();
        assert_eq!(
            readyz(&http, port).await,
            Some(503),
            "/readyz while the broker is away ({:?} into the outage)",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = seen(&receiver).ok.len();
    let restarting = killed.elapsed();
    let restart_took = tokio::task::block_in_place(|| broker.start());
    let up_at = killed.elapsed();
    wait_readyz(&http, port, 200, Duration::from_secs(60)).await;
    poller.abort();
    // The processor consumes what arrives after the outage too.
    testkit::produce_all(&producer, &c.topics.events, &records[BEFORE..]).await;
    let polls = polls.lock().unwrap().clone();
    let first_503 = polls.iter().find(|(_, s)| *s == Some(503)).unwrap().0;
    let back = polls
        .iter()
        .find(|(t, s)| *t > restarting && *s == Some(200))
        .map_or(killed.elapsed(), |(t, _)| *t);
    assert!(
        polls
            .iter()
            .filter(|(t, _)| *t >= first_503 && *t < back)
            .all(|(_, s)| *s == Some(503)),
        "/readyz answered other than 503 while the broker was away: {polls:?}"
    );
    let open = wait_settled(
        &receiver,
        &failed,
        &expected,
        Duration::from_secs(120),
        &mut [&mut p],
    )
    .await;
    assert_eq!(open, 0, "{open} pairs neither delivered nor failed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.check_alive().unwrap();
    let s = seen(&receiver);
    let failed: Vec<Pair> = failed.lock().unwrap().clone();
    let failed_set: HashSet<&Pair> = failed.iter().collect();
    assert!(
        expected
            .iter()
            .filter(|p| p.0 == "down")
            .all(|p| failed_set.contains(p)),
        "every pair of the always-failing endpoint is in webhooks.failed"
    );
    assert!(s.ids.values().all(|ids| ids.len() == 1));
    let dup: usize = s.ok.values().map(|n| n - 1).sum();
    if let Some(needle) = expect_in_log {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(needle),
            "the processor's log never mentions {needle}"
        );
    }
    let text = format!(
        "{name}: broker kill -9 after {at_kill} of {} pairs delivered; restarted at +{:.1} s, \
         up at +{:.1} s (its start took {:.1} s); /readyz 503 from +{:.1} s to +{:.1} s, then \
         200; {during} delivered by the end of the outage; {} delivered, {} failed, {} \
         requests, {dup} re-delivered after a 2xx; the processor stayed up\n",
        expected.len(),
        restarting.as_secs_f64(),
        up_at.as_secs_f64(),
        restart_took.as_secs_f64(),
        first_503.as_secs_f64(),
        back.as_secs_f64(),
        s.ok.len(),
        failed_set.len(),
        s.requests,
    );
    report(name, &text);
    p.stop(Duration::from_secs(30)).await.unwrap();
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_for_20_s_mid_run_loses_nothing_and_readyz_reports_the_outage() {
    let _serial = SERIAL.lock().await;
    broker_outage("broker-outage", Duration::from_secs(20), &[], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_away_longer_than_the_message_timeout_loses_nothing() {
    let _serial = SERIAL.lock().await;
    // The producer's message.timeout.ms is 120 s (kafka::producer); 8 s here, so an outage of
    // 20 s plus the restart outlives it by far: timed-out records must be produced again.
    broker_outage(
        "broker-outage-timeout",
        Duration::from_secs(20),
        &["kafka.properties.message.timeout.ms=8000"],
        // Proof that records did time out and were produced again.
        Some("MessageTimedOut"),
    )
    .await;
}
