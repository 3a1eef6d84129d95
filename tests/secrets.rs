//! No secret anywhere it should not be: a full scenario through the binary on the real broker —
//! CLI puts, gets and lists, `check-config`, the processor with debug logs in text and then (after
//! a restart) in JSON, deliveries, retries, a delivery that ends in the failed topic, invalid
//! events, invalid subscription records carrying secrets, a subscription suspended by an invalid
//! latest record while a retry of it waits, and `/metrics` — and then every captured output,
//! every log line and every output topic is searched for each subscription secret and for the
//! SASL password. The subscriptions topic itself is where secrets live (protected by ACLs, see
//! the README) and is the one place not searched.
//!
//! On the way it checks what an operator relies on: the suspended subscription's pending retry
//! ends as `subscription_invalid` after the restart, `subscriptions list` and `get` show it with
//! its reason, and `webhooks_subscriptions_invalid` counts it.

use mgpass_testkit as testkit;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mgpass_webhooks::config::Config;
use mgpass_webhooks::delivery::DeliveryLogRecord;
use testkit::receiver::{Behaviour, Receiver};

const BIN: &str = env!("CARGO_BIN_EXE_mgpass-webhooks");

fn random_tag() -> String {
    use rand::Rng;
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// The config file of the scenario: the test's topics, the receiver's CA, loopback allowed,
/// debug logs, and a SASL password among the Kafka properties (librdkafka accepts it, unused,
/// on a PLAINTEXT broker).
fn write_config(dir: &Path, c: &Config, ca: &Path, admin: &str, sasl_password: &str) -> PathBuf {
    let mut c = c.clone();
    c.kafka
        .properties
        .insert("sasl.username".into(), "mgpass".into());
    c.kafka
        .properties
        .insert("sasl.password".into(), sasl_password.into());
    c.http.ca_bundle = Some(ca.to_path_buf());
    c.http.request_timeout_ms = 3_000;
    c.http.connect_timeout_ms = 1_000;
    c.delivery.shutdown_deadline_secs = 3;
    c.admin.listen = admin.into();
    c.log.level = "debug".into();
    let path = dir.join("mgpass.toml");
    std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
    path
}

/// Everything the scenario captured, for the final search.
#[derive(Default)]
struct Captured {
    texts: Vec<(String, String)>,
}

impl Captured {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.texts.push((what.into(), text.into()));
    }
}

/// Runs a CLI command to completion; returns (success, stdout, stderr).
fn cli(config: &Path, args: &[&str], envs: &[(&str, &str)], json: bool) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config);
    if json {
        cmd.args(["--set", "log.format=json"]);
    }
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The processor, its stdout and stderr going to files.
fn start_processor(config: &Path, dir: &Path, name: &str, json: bool) -> (Child, PathBuf, PathBuf) {
    let out = dir.join(format!("{name}.stdout"));
    let err = dir.join(format!("{name}.stderr"));
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config);
    if json {
        cmd.args(["--set", "log.format=json"]);
    }
    let child = cmd
        .arg("run")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("start the processor");
    (child, out, err)
}

fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the processor exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the processor did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_ready(admin: &str) {
    let url = format!("http://{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn delivery_log(
    c: &Config,
    at_least: usize,
    until: impl Fn(&[DeliveryLogRecord]) -> bool,
) -> Vec<DeliveryLogRecord> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records: Vec<DeliveryLogRecord> =
            testkit::read_topic(&c.topics.delivery_log, usize::MAX, Duration::from_secs(2))
                .await
                .iter()
                .map(|m| serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap())
                .collect();
        if records.len() >= at_least && until(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "delivery log incomplete after 90 s: {records:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_sasl_password_in_any_output_topic_or_log() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let tag = random_tag();
    let secret = |name: &str| format!("whsec_{name}_{tag}");
    let sasl_password = format!("sasl-pw-{tag}");
    let (s_ok, s_fail, s_flaky, s_suspend) = (
        secret("ok"),
        secret("fail"),
        secret("flaky"),
        secret("suspend"),
    );
    let (s_badurl, s_badjson) = (secret("badurl"), secret("badjson"));
    let all_secrets = [
        &s_ok,
        &s_fail,
        &s_flaky,
        &s_suspend,
        &s_badurl,
        &s_badjson,
        &sasl_password,
    ];
    receiver.set_secret("/ok", &s_ok);
    receiver.set_secret("/flaky", &s_flaky);
    receiver.set_behaviour("/fail", Behaviour::Status(500));
    receiver.set_behaviour("/suspend", Behaviour::Status(503));
    receiver.set_behaviour("/flaky", Behaviour::Sequence(vec![500]));

    let c = testkit::config("secrets");
    let dir = tempfile::tempdir().unwrap();
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let config = write_config(dir.path(), &c, &receiver.ca_file(), &admin, &sasl_password);
    let mut captured = Captured::default();

    // Topic setup and check-config, in both log formats.
    let (ok, out, err) = cli(&config, &["setup-topics"], &[], false);
    assert!(ok, "setup-topics: {out}{err}");
    captured.add("setup-topics", format!("{out}{err}"));
    for json in [false, true] {
        let (ok, out, err) = cli(&config, &["check-config"], &[], json);
        assert!(ok, "check-config: {out}{err}");
        assert!(out.contains("\"sasl.password\" = \"[redacted]\""), "{out}");
        captured.add(format!("check-config json={json}"), format!("{out}{err}"));
    }

    // The CLI puts the four subscriptions, each secret from the environment.
    for (id, path, s) in [
        ("sub_ok", "/ok", &s_ok),
        ("sub_fail", "/fail", &s_fail),
        ("sub_flaky", "/flaky", &s_flaky),
        ("sub_suspend", "/suspend", &s_suspend),
    ] {
        let url = receiver.url(path).to_string();
        let (ok, out, err) = cli(
            &config,
            &[
                "subscriptions",
                "put",
                "--id",
                id,
                "--url",
                &url,
                "--secret-env",
                "HOOK_SECRET",
            ],
            &[("HOOK_SECRET", s)],
            id == "sub_flaky",
        );
        assert!(ok, "put {id}: {out}{err}");
        // The record is echoed with the secret's fingerprint in place of the secret.
        assert!(out.contains("\"secret_fingerprint\":\""), "{out}");
        captured.add(format!("put {id}"), format!("{out}{err}"));
    }
    // An admin's producer writes two invalid records that carry secrets.
    let producer = testkit::producer();
    let badurl = serde_json::json!({"id": "sub_badurl", "url": "ftp://p.example/h",
        "event_types": ["*"], "secret": s_badurl});
    let badjson = serde_json::json!({"id": "sub_badjson", "url": "https://p.example/h",
        "event_types": ["*"], "secret": "x", "enabled": s_badjson});
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[
            (
                Some("sub_badurl".into()),
                Some(badurl.to_string().into_bytes()),
            ),
            (
                Some("sub_badjson".into()),
                Some(badjson.to_string().into_bytes()),
            ),
        ],
    )
    .await;
    // One good event (every subscription is `*`) and one undecodable one.
    testkit::produce_all(
        &producer,
        &c.topics.events,
        &[
            (
                Some("u1".into()),
                Some(testkit::event_json("rewards.points_awarded", "u1")),
            ),
            (Some("u2".into()), Some(b"{\"event_type\": 42}".to_vec())),
        ],
    )
    .await;

    // Phase 1: the processor with text logs. ok delivered, flaky on its retry, fail and suspend
    // fail twice.
    let (proc1, out1, err1) = start_processor(&config, dir.path(), "run-text", false);
    wait_ready(&admin).await;
    receiver.wait_for("/ok", 1, Duration::from_secs(60)).await;
    receiver
        .wait_for("/flaky", 2, Duration::from_secs(60))
        .await;
    receiver.wait_for("/fail", 2, Duration::from_secs(60)).await;
    receiver
        .wait_for("/suspend", 2, Duration::from_secs(60))
        .await;
    // sub_suspend's attempt 3 waits in the 5 s tier: its latest record becomes invalid now.
    let suspended = serde_json::json!({"id": "sub_suspend", "url": "https://p.example/h",
        "event_types": ["rewards.nope"], "secret": s_suspend});
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[(
            Some("sub_suspend".into()),
            Some(suspended.to_string().into_bytes()),
        )],
    )
    .await;
    let metrics1 = metrics_when(&admin, "webhooks_subscriptions_invalid 3").await;
    captured.add("metrics (text run)", metrics1);
    stop(proc1);

    // Phase 2: restarted with JSON logs. The pending retry of the suspended subscription ends
    // as subscription_invalid; sub_fail goes on to its fourth attempt and the failed topic.
    let (proc2, out2, err2) = start_processor(&config, dir.path(), "run-json", true);
    wait_ready(&admin).await;
    let records = delivery_log(&c, 1, |r| {
        r.iter()
            .any(|x| x.subscription_id == "sub_fail" && x.attempt == 4)
            && r.iter().any(|x| x.outcome == "subscription_invalid")
    })
    .await;
    let metrics2 = metrics_when(&admin, "webhooks_subscriptions_invalid 3").await;
    assert!(
        metrics2.contains(
            "webhooks_attempts_total{event_type=\"rewards.points_awarded\",outcome=\"subscription_invalid\"} 1"
        ),
        "{metrics2}"
    );
    captured.add("metrics (json run)", metrics2);
    stop(proc2);
    let ended: Vec<_> = records
        .iter()
        .filter(|r| r.subscription_id == "sub_suspend")
        .map(|r| (r.attempt, r.outcome.as_str()))
        .collect();
    assert_eq!(
        ended,
        [
            (1, "http_error"),
            (2, "http_error"),
            (3, "subscription_invalid")
        ],
        "the suspended subscription's retry ends, never sent again"
    );
    assert_eq!(receiver.received_on("/suspend").len(), 2);
    for (i, record) in records.iter().enumerate() {
        captured.add(
            format!("delivery-log[{i}]"),
            serde_json::to_string(record).unwrap(),
        );
    }

    // The CLI after the run: get and list, in both formats; the suspended ones with reasons.
    for json in [false, true] {
        let (ok, out, err) = cli(&config, &["subscriptions", "list"], &[], json);
        assert!(ok, "list: {out}{err}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let status = |id: &str| {
            lines
                .iter()
                .find(|l| l["id"] == id)
                .unwrap_or_else(|| panic!("{id} listed: {out}"))
                .clone()
        };
        let ok_line = status("sub_ok");
        assert!(ok_line.get("secret").is_none(), "{ok_line}");
        assert_eq!(
            ok_line["secret_fingerprint"].as_str().map(str::len),
            Some(8),
            "{ok_line}"
        );
        for (id, reason) in [
            ("sub_suspend", "bad_event_types"),
            ("sub_badurl", "bad_url"),
            ("sub_badjson", "bad_json"),
        ] {
            let l = status(id);
            assert_eq!(
                (l["status"].as_str(), l["reason"].as_str()),
                (Some("invalid"), Some(reason)),
                "{l}"
            );
        }
        assert!(err.contains("3 subscriptions, 3 suspended"), "{err}");
        captured.add(format!("list json={json}"), format!("{out}{err}"));
        for id in ["sub_ok", "sub_suspend"] {
            let (ok, out, err) = cli(&config, &["subscriptions", "get", "--id", id], &[], json);
            assert!(ok, "get {id}: {out}{err}");
            captured.add(format!("get {id} json={json}"), format!("{out}{err}"));
        }
    }

    // Every output topic but the subscriptions topic.
    let t = &c.topics;
    let mut failed_seen = 0;
    let mut invalid_seen = 0;
    for topic in [
        &t.delivery_log,
        &t.failed,
        &t.retry_1s,
        &t.retry_5s,
        &t.retry_25s,
        &t.replay,
        &t.invalid,
        &t.events,
    ] {
        for m in testkit::read_topic(topic, usize::MAX, Duration::from_secs(3)).await {
            use rdkafka::Message;
            let mut text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            if let Some(headers) = m.headers() {
                use rdkafka::message::Headers;
                for h in headers.iter() {
                    text.push_str(&String::from_utf8_lossy(h.value.unwrap_or_default()));
                }
            }
            failed_seen += usize::from(topic == &t.failed);
            invalid_seen += usize::from(topic == &t.invalid);
            captured.add(format!("topic {topic}"), text);
        }
    }
    assert_eq!(failed_seen, 1, "sub_fail ended in the failed topic");
    assert_eq!(invalid_seen, 1, "the undecodable event");

    // The processors' logs: text, then JSON, both at debug level.
    for (what, path) in [
        ("run-text stdout", &out1),
        ("run-text stderr", &err1),
        ("run-json stdout", &out2),
        ("run-json stderr", &err2),
    ] {
        let text = std::fs::read_to_string(path).unwrap();
        captured.add(what, text);
    }
    let text_log = std::fs::read_to_string(&err1).unwrap();
    assert!(text_log.contains("DEBUG"), "debug logs were captured");
    assert!(text_log.contains("sub_suspend"), "the suspension is logged");
    let json_log = std::fs::read_to_string(&err2).unwrap();
    assert!(json_log.contains("\"level\":\"DEBUG\""), "{json_log}");

    let mut leaks = Vec::new();
    for (what, text) in &captured.texts {
        for s in all_secrets {
            if text.contains(s.as_str()) {
                leaks.push(format!("{s} in {what}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
    // The search would have found them: the secrets are on the subscriptions topic, in clear.
    let subs = testkit::read_topic(&t.subscriptions, 7, Duration::from_secs(20)).await;
    let stored: String = subs
        .iter()
        .map(|m| {
            String::from_utf8_lossy(rdkafka::Message::payload(m).unwrap_or_default()).into_owned()
        })
        .collect();
    for s in [&s_ok, &s_fail, &s_flaky, &s_suspend, &s_badurl] {
        assert!(
            stored.contains(s.as_str()),
            "{s} on the subscriptions topic"
        );
    }
}

/// `/metrics` once it contains `line`.
async fn metrics_when(admin: &str, line: &str) -> String {
    let url = format!("http://{admin}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if let Ok(text) = r.text().await {
                if text.lines().any(|l| l == line) {
                    return text;
                }
                assert!(Instant::now() < deadline, "no {line:?} in {text}");
            }
        }
        assert!(Instant::now() < deadline, "/metrics never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
