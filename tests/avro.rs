//! Avro events through a real schema registry (Apicurio Registry, `MGPASS_TEST_REGISTRY`, which
//! `scripts/test.sh` starts) and the real broker: every known event type in Avro gives the same
//! body bytes as its JSON twin, verified in Node with the guide's code; JSON and Avro mix on
//! one topic; bad Avro reaches the invalid topic with its reason; a registry stopped mid-run
//! and started again loses nothing and sends nothing to the invalid topic; delivery-log and
//! failed records written as registered Avro read back with the registered schema.

use mgpass_testkit as testkit;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mgpass_webhooks::app::run_processor;
use mgpass_webhooks::avro::registry::Registry;
use mgpass_webhooks::avro::{self, encode::event_to_avro, EventDecoder, REWARDS_EVENT_SCHEMA};
use mgpass_webhooks::body::build_body;
use mgpass_webhooks::config::Config;
use mgpass_webhooks::delivery::{DeliveryLogRecord, DeliveryTask};
use mgpass_webhooks::events::{RewardsEvent, KNOWN_EVENT_TYPES};
use mgpass_webhooks::metrics::Metrics;
use rdkafka::message::{Headers, Message};
use testkit::receiver::{Behaviour, Receiver};
use testkit::registry::{registry_url, OwnRegistry};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "avro-test-secret-0123456789abcdef";
const TIMESTAMP: &str = "2025-01-15T10:30:00.000Z";

struct Running {
    cancel: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    metrics: Arc<Metrics>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

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

/// A test's config, topics and receiver: one `*` subscription to `path`, signed with [`SECRET`].
async fn setup(name: &str, registry: String, path: &str) -> (Config, Receiver) {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    receiver.set_secret(path, SECRET);
    let mut c = testkit::config(name);
    c.http = receiver.http_config();
    c.registry.url = Some(registry);
    testkit::setup_topics(&c).await;
    let sub = testkit::subscription_json("all", receiver.url(path).as_str(), &["*"], None, SECRET);
    testkit::produce_all(
        &testkit::producer(),
        &c.topics.subscriptions,
        &[(Some("all".into()), Some(sub))],
    )
    .await;
    (c, receiver)
}

fn registry(c: &Config) -> Arc<Registry> {
    Registry::from_config(&c.registry).unwrap().unwrap()
}

/// The event as Confluent-framed Avro of schema `id` (`schema_text`).
fn avro_value(event: &serde_json::Value, id: u32, schema_text: &str) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema_text).unwrap();
    let value = event_to_avro(event, &schema).unwrap();
    avro::frame(id, &apache_avro::to_avro_datum(&schema, value).unwrap())
}

fn twin(event_type: &str, user: &str) -> serde_json::Value {
    let mut e = mgpass_webhooks::commands::sample_event(event_type, user, Some("app-1"));
    e["timestamp"] = TIMESTAMP.into();
    if event_type == "cashback.processed" {
        e["data"]["processed_at"] = "2025-01-15T10:29:59.123Z".into();
    }
    e
}

type Record = (Option<String>, Option<Vec<u8>>);

fn keyed(key: &str, value: Vec<u8>) -> Record {
    (Some(key.to_string()), Some(value))
}

/// One body for Node: `(body, signature, event_type, the data JSON text JavaScript should give
/// the same body for, timestamp)`.
type NodeCase = (Vec<u8>, String, String, String, String);

/// Runs the guide's check (`tests/support/js_verify.js`) in Node over `cases`; panics with
/// Node's report unless all pass.
fn verify_in_node(cases: &[NodeCase]) {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/js_verify.js");
    let mut lines = String::new();
    for (id, (body, signature, event_type, data, timestamp)) in cases.iter().enumerate() {
        let line = serde_json::json!({
            "id": id, "name": format!("avro-{event_type}"),
            "body_hex": hex::encode(body), "signature": signature,
            "secret_hex": hex::encode(SECRET.as_bytes()),
            "event_type_hex": hex::encode(event_type.as_bytes()),
            "data_hex": hex::encode(data.as_bytes()), "timestamp": timestamp,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let mut child = Command::new(&node)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("THIS TEST REQUIRES NODE.JS and could not start `{node}`: {e}; set NODE=")
        });
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(lines.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SUMMARY "))
        .unwrap_or_else(|| panic!("no SUMMARY from node: {stdout} {:?}", out.stderr));
    assert!(
        out.status.success() && summary.contains(&format!("passed={}", cases.len())),
        "node: {summary}\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_known_event_type_in_avro_gives_its_json_twins_body_verified_in_node() {
    let (c, receiver) = setup("avro-twins", registry_url().await, "/hook").await;
    let subject = format!("{}-value", c.topics.events);
    let id = registry(&c)
        .register(&subject, REWARDS_EVENT_SCHEMA)
        .await
        .unwrap();
    // Each known type and one outside the list (the generic branch), JSON and Avro
    // interleaved on the one events topic.
    let mut types: Vec<&str> = KNOWN_EVENT_TYPES.to_vec();
    types.push("partner.custom_thing");
    let mut events = Vec::new();
    let mut twins = BTreeMap::new();
    for t in &types {
        let mut e = twin(t, "usr_twin");
        if *t == "partner.custom_thing" {
            e["data"] = serde_json::json!({"z": 1.50, "10": [true, null], "a": {"deep": "é"}});
        }
        events.push(keyed("usr_twin", serde_json::to_vec(&e).unwrap()));
        events.push(keyed("usr_twin", avro_value(&e, id, REWARDS_EVENT_SCHEMA)));
        twins.insert(t.to_string(), e);
    }
    testkit::produce_all(&testkit::producer(), &c.topics.events, &events).await;
    let running = start(&c);
    let got = receiver
        .wait_for("/hook", events.len(), Duration::from_secs(60))
        .await;
    assert_eq!(
        got.len(),
        events.len(),
        "every JSON and Avro event delivered"
    );
    let mut by_type: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut node_cases = Vec::new();
    for r in &got {
        assert_eq!(r.signature_valid, Some(true), "signature of {:?}", r.body);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let t = v["event_type"].as_str().unwrap().to_string();
        let data = serde_json::to_string(&twins[&t]["data"]).unwrap();
        node_cases.push((
            r.body.clone(),
            r.header("x-webhook-signature").unwrap().to_string(),
            t.clone(),
            data,
            TIMESTAMP.to_string(),
        ));
        by_type.entry(t).or_default().push(r.body.clone());
    }
    for (t, bodies) in &by_type {
        assert_eq!(bodies.len(), 2, "{t}: its JSON and its Avro event");
        assert_eq!(
            bodies[0], bodies[1],
            "{t}: the same body bytes in both forms"
        );
        let e = RewardsEvent::decode(Some(&serde_json::to_vec(&twins[t]).unwrap())).unwrap();
        assert_eq!(
            bodies[0],
            build_body(&e.event_type, &e.data, &e.timestamp),
            "{t}: the JSON twin's body"
        );
    }
    assert_eq!(by_type.len(), types.len());
    verify_in_node(&node_cases);
    let invalid = testkit::read_topic(&c.topics.invalid, 1, Duration::from_secs(2)).await;
    assert!(invalid.is_empty(), "nothing invalid");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_avro_goes_to_the_invalid_topic_with_its_reason_and_good_events_flow_past() {
    let (c, receiver) = setup("avro-bad", registry_url().await, "/hook").await;
    let reg = registry(&c);
    let id = reg
        .register(&format!("{}-value", c.topics.events), REWARDS_EVENT_SCHEMA)
        .await
        .unwrap();
    let other = r#"{"type":"record","name":"NotAnEvent","namespace":"t","fields":[{"name":"x","type":"long"}]}"#;
    let other_id = reg
        .register(&format!("{}not-an-event-value", c.topics.events), other)
        .await
        .unwrap();
    let good = twin("rewards.points_awarded", "usr_good");
    let framed = avro_value(&good, id, REWARDS_EVENT_SCHEMA);
    let datum = &framed[avro::HEADER_LEN..];
    let mut trailing = framed.clone();
    trailing.extend_from_slice(b"\x00junk");
    let other_datum =
        apache_avro::to_avro_datum(&apache_avro::Schema::parse_str(other).unwrap(), {
            apache_avro::types::Value::Record(vec![(
                "x".into(),
                apache_avro::types::Value::Long(7),
            )])
        })
        .unwrap();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("avro_unknown_schema", avro::frame(987_654_321, datum)),
        ("avro_truncated", framed[..framed.len() - 1].to_vec()),
        ("avro_truncated", framed[..avro::HEADER_LEN + 3].to_vec()),
        ("avro_trailing_bytes", trailing),
        ("avro_schema_mismatch", avro::frame(other_id, &other_datum)),
        ("avro_bad_frame", vec![0, 0, 1]),
    ];
    let mut events = vec![keyed("usr_good", framed.clone())];
    for (i, (_, value)) in bad.iter().enumerate() {
        events.push(keyed(&format!("bad-{i}"), value.clone()));
    }
    events.push(keyed("usr_good", serde_json::to_vec(&good).unwrap()));
    testkit::produce_all(&testkit::producer(), &c.topics.events, &events).await;
    let running = start(&c);
    let invalid = testkit::read_topic(&c.topics.invalid, bad.len(), Duration::from_secs(60)).await;
    let mut reasons = BTreeMap::new();
    for m in &invalid {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let headers = m.headers().unwrap();
        let reason = headers
            .iter()
            .find(|h| h.key == "mgpass-invalid-reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .unwrap();
        let i: usize = key.strip_prefix("bad-").unwrap().parse().unwrap();
        assert_eq!(
            m.payload().unwrap(),
            &bad[i].1[..],
            "the original bytes are kept"
        );
        reasons.insert(i, reason);
    }
    let expected: BTreeMap<usize, String> = bad
        .iter()
        .enumerate()
        .map(|(i, (r, _))| (i, r.to_string()))
        .collect();
    assert_eq!(reasons, expected);
    let got = receiver.wait_for("/hook", 2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "the good Avro and JSON events are delivered");
    assert_eq!(got[0].body, got[1].body);
    let text = running.metrics.render();
    for (reason, _) in &bad {
        assert!(
            text.contains(&format!(
                "webhooks_invalid_events_total{{reason=\"{reason}\"}} "
            )),
            "{reason} counted"
        );
    }
    running.stop().await;
}

/// The event schema with another doc: the same shape, another content, so another id the
/// processor has not looked up yet.
fn second_schema() -> String {
    let mut v: serde_json::Value = serde_json::from_str(REWARDS_EVENT_SCHEMA).unwrap();
    v["doc"] = "the same event, registered again with another doc".into();
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_stopped_mid_run_and_started_again_loses_nothing_and_invalidates_nothing() {
    let own = OwnRegistry::start().expect("starting a registry of this test's own");
    let (c, receiver) = setup("avro-outage", own.url(), "/hook").await;
    let second = second_schema();
    let subject = format!("{}-value", c.topics.events);
    let register_both = || async {
        let reg = registry(&c);
        let a = reg.register(&subject, REWARDS_EVENT_SCHEMA).await.unwrap();
        let b = reg
            .register(&format!("{subject}-second"), &second)
            .await
            .unwrap();
        (a, b)
    };
    let (id_a, id_b) = register_both().await;
    assert_ne!(id_a, id_b);
    let producer = testkit::producer();
    let event = |i: usize| twin("rewards.points_awarded", &format!("usr_{i}"));
    let before: Vec<Record> = (0..5)
        .map(|i| keyed("k", avro_value(&event(i), id_a, REWARDS_EVENT_SCHEMA)))
        .collect();
    testkit::produce_all(&producer, &c.topics.events, &before).await;
    let running = start(&c);
    assert_eq!(
        receiver
            .wait_for("/hook", 5, Duration::from_secs(60))
            .await
            .len(),
        5,
        "delivered while the registry is up"
    );

    own.stop().unwrap();
    // Schema B is not in the processor's cache: its events wait for the registry. Schema A
    // is, and JSON needs no registry: those are delivered meanwhile.
    let mut during: Vec<Record> = (5..15)
        .map(|i| keyed("k", avro_value(&event(i), id_b, &second)))
        .collect();
    during.extend((15..20).map(|i| keyed("k", serde_json::to_vec(&event(i)).unwrap())));
    during.extend((20..25).map(|i| keyed("k", avro_value(&event(i), id_a, REWARDS_EVENT_SCHEMA))));
    testkit::produce_all(&producer, &c.topics.events, &during).await;
    assert_eq!(
        receiver
            .wait_for("/hook", 15, Duration::from_secs(60))
            .await
            .len(),
        15,
        "JSON and cached-schema events delivered during the outage"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while running.metrics.registry_waiting.get() < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        running.metrics.registry_waiting.get(),
        10,
        "schema-B events wait"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.received_on("/hook").len(),
        15,
        "nothing of B sent yet"
    );
    assert!(running.metrics.registry_unavailable.get() >= 10);
    let invalid = testkit::read_topic(&c.topics.invalid, 1, Duration::from_secs(1)).await;
    assert!(invalid.is_empty(), "an outage is not bad input");

    own.restart().unwrap();
    // Its storage is a file: the schemas are still there, under the same ids.
    assert_eq!(
        register_both().await,
        (id_a, id_b),
        "the same schemas under the same ids after the restart"
    );
    let got = receiver
        .wait_for("/hook", 25, Duration::from_secs(60))
        .await;
    assert_eq!(
        got.len(),
        25,
        "every event delivered after the registry came back"
    );
    let users: std::collections::BTreeSet<String> = got
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["data"]["user_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(users.len(), 25, "each event once");
    assert_eq!(running.metrics.registry_waiting.get(), 0);
    let invalid = testkit::read_topic(&c.topics.invalid, 1, Duration::from_secs(1)).await;
    assert!(invalid.is_empty(), "none invalid");
    assert!(
        running
            .metrics
            .render()
            .contains("webhooks_events_total{outcome=\"invalid\"} 0"),
        "nothing counted invalid"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn avro_delivery_log_and_failed_records_read_back_with_the_registered_schema() {
    let (mut c, receiver) = setup("avro-out", registry_url().await, "/fail").await;
    receiver.set_behaviour("/fail", Behaviour::Status(500));
    c.registry.output_format = "avro".into();
    let reg = registry(&c);
    let id = reg
        .register(&format!("{}-value", c.topics.events), REWARDS_EVENT_SCHEMA)
        .await
        .unwrap();
    let e = twin("cashback.rejected", "usr_out");
    let events = vec![
        keyed("usr_out", avro_value(&e, id, REWARDS_EVENT_SCHEMA)),
        keyed("usr_out", serde_json::to_vec(&e).unwrap()),
    ];
    testkit::produce_all(&testkit::producer(), &c.topics.events, &events).await;
    let running = start(&c);
    // Two deliveries × four attempts, then two failed records (after 1 + 5 + 25 s).
    let log = testkit::read_topic(&c.topics.delivery_log, 8, Duration::from_secs(90)).await;
    assert_eq!(log.len(), 8);
    let mut attempts = Vec::new();
    for m in &log {
        let payload = m.payload().unwrap();
        assert!(avro::is_framed(payload), "delivery-log records are Avro");
        let r: DeliveryLogRecord = avro::records::decode_record(Some(&reg), payload)
            .await
            .unwrap();
        assert_eq!(r.outcome, "http_error");
        assert_eq!(r.http_status, Some(500));
        attempts.push((r.delivery_id.clone(), r.attempt));
    }
    attempts.sort();
    assert_eq!(
        attempts.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
        [1, 2, 3, 4, 1, 2, 3, 4]
    );
    let failed = testkit::read_topic(&c.topics.failed, 2, Duration::from_secs(30)).await;
    assert_eq!(failed.len(), 2);
    let expected = RewardsEvent::decode(Some(&serde_json::to_vec(&e).unwrap())).unwrap();
    let body = build_body(&expected.event_type, &expected.data, &expected.timestamp);
    for m in &failed {
        assert!(
            avro::is_framed(m.payload().unwrap()),
            "failed records are Avro"
        );
        let t: DeliveryTask = avro::records::decode_record(Some(&reg), m.payload().unwrap())
            .await
            .unwrap();
        assert_eq!(t.body.as_bytes(), &body[..]);
        assert_eq!(t.client_id, Some(Some("app-1".into())));
    }
    // Registered under the topic-name strategy.
    let subjects = testkit::registry::subjects(reg.base_url()).await.unwrap();
    for topic in [&c.topics.delivery_log, &c.topics.failed] {
        assert!(subjects.contains(&format!("{topic}-value")), "{subjects:?}");
    }
    running.stop().await;
    // The operator tools read them: `deliveries show` and `failed list` / the replay job.
    let (records, _) = mgpass_webhooks::ops::failed::delivery_attempts(&c, &attempts[0].0, None)
        .await
        .unwrap();
    assert_eq!(records.len(), 4);
    let read = mgpass_webhooks::ops::failed::read_failed(&c, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        read.selected.len(),
        2,
        "undecodable: {:?}",
        read.undecodable
    );
    assert!(read.undecodable.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_sample_format_avro_registers_by_either_strategy_and_decodes() {
    let url = registry_url().await;
    let mut c = testkit::config("avro-sample");
    c.registry.url = Some(url.clone());
    testkit::setup_topics(&c).await;
    let bin = env!("CARGO_BIN_EXE_mgpass-webhooks");
    for (strategy, subject) in [
        ("topic_name", format!("{}-value", c.topics.events)),
        ("record_name", "com.mgpass.rewards.RewardsEvent".to_string()),
    ] {
        let out = Command::new(bin)
            .args(["--bootstrap-servers", &c.kafka.bootstrap_servers])
            .args(["--set", &format!("topics.events={}", c.topics.events)])
            .args(["--set", &format!("registry.url={url}")])
            .args(["produce-sample", "--format", "avro", "--event-type"])
            .arg("rewards.tier_promoted")
            .args(["--subject-strategy", strategy])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let subjects = testkit::registry::subjects(&url).await.unwrap();
        assert!(subjects.contains(&subject), "{subject} in {subjects:?}");
    }
    let records = testkit::read_topic(&c.topics.events, 2, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 2);
    let decoder = EventDecoder::new(&c.registry).unwrap();
    for m in &records {
        assert!(avro::is_framed(m.payload().unwrap()));
        let e = decoder.decode(m.payload()).await.unwrap();
        assert_eq!(e.event_type, "rewards.tier_promoted");
        assert_eq!(e.data["new_tier"], "gold");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_avro_event_retried_by_reference_is_rebuilt_from_avro_with_the_same_body() {
    let (c, receiver) = setup("avro-big", registry_url().await, "/hook").await;
    receiver.set_behaviour("/hook", Behaviour::Sequence(vec![500]));
    let id = registry(&c)
        .register(&format!("{}-value", c.topics.events), REWARDS_EVENT_SCHEMA)
        .await
        .unwrap();
    // 400,000 quotes: about 800 KB of JSON text in the event's generic data branch, 1.6 MB
    // once escaped again into a task record, which therefore carries the body by reference.
    let mut e = twin("rewards.redeemed", "usr_big");
    e["data"] = serde_json::json!({"user_id": "usr_big", "note": "\"".repeat(400_000)});
    let value = avro_value(&e, id, REWARDS_EVENT_SCHEMA);
    assert!(
        (800_000..1_000_000).contains(&value.len()),
        "{}",
        value.len()
    );
    testkit::produce_all(
        &testkit::producer(),
        &c.topics.events,
        &[keyed("usr_big", value)],
    )
    .await;
    let running = start(&c);
    let got = receiver.wait_for("/hook", 2, Duration::from_secs(60)).await;
    assert_eq!(
        got.len(),
        2,
        "attempt 1 failed with 500, attempt 2 delivered"
    );
    assert_eq!(
        got[0].body, got[1].body,
        "the retry rebuilt the same bytes from the Avro source"
    );
    assert!(got.iter().all(|r| r.signature_valid == Some(true)));
    let retries = testkit::read_topic(&c.topics.retry_1s, 1, Duration::from_secs(30)).await;
    let task: DeliveryTask = serde_json::from_slice(retries[0].payload().unwrap()).unwrap();
    assert!(task.body_by_reference && task.body.is_empty(), "{task:?}");
    running.stop().await;
}

/// Waits until `f` holds (checked every 100 ms) or `timeout` passed; returns whether it held.
async fn eventually(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_answering_5xx_timing_out_or_a_bare_404_is_waited_for_never_bad_input() {
    use testkit::registry::{Fault, FaultyProxy};
    let upstream = registry_url().await;
    let proxy = FaultyProxy::start(&upstream).await.unwrap();
    let (mut c, receiver) = setup("avro-faults", proxy.url(&upstream), "/hook").await;
    c.registry.timeout_ms = 300;
    let id = registry(&c)
        .register(&format!("{}-value", c.topics.events), REWARDS_EVENT_SCHEMA)
        .await
        .unwrap();
    proxy.set(Fault::Status(
        503,
        r#"{"error_code":50301,"message":"unavailable"}"#.into(),
    ));
    let events: Vec<Record> = (0..3)
        .map(|i| {
            keyed(
                "k",
                avro_value(
                    &twin("rewards.redeemed", &format!("usr_{i}")),
                    id,
                    REWARDS_EVENT_SCHEMA,
                ),
            )
        })
        .collect();
    testkit::produce_all(&testkit::producer(), &c.topics.events, &events).await;
    let running = start(&c);
    let m = running.metrics.clone();
    assert!(
        eventually(Duration::from_secs(30), || m.registry_waiting.get() == 3).await,
        "the three events wait on a 503 (waiting {})",
        m.registry_waiting.get()
    );
    // Each fault in turn: every waiting record meets it again (its lookup fails again).
    for fault in [
        Fault::Status(500, r#"{"error_code":50001,"message":"boom"}"#.into()),
        Fault::Hang,
        Fault::Status(404, "<html>no such page</html>".into()),
        Fault::Status(429, "{}".into()),
    ] {
        proxy.set(fault.clone());
        let before = m.registry_unavailable.get();
        assert!(
            eventually(Duration::from_secs(30), || m.registry_unavailable.get()
                >= before + 3)
            .await,
            "{fault:?} is retried"
        );
        assert_eq!(m.registry_waiting.get(), 3, "{fault:?}: still waiting");
        assert!(
            receiver.received_on("/hook").is_empty(),
            "{fault:?}: nothing sent"
        );
    }
    let invalid = testkit::read_topic(&c.topics.invalid, 1, Duration::from_secs(1)).await;
    assert!(
        invalid.is_empty(),
        "an unavailable registry is not bad input"
    );
    proxy.set(Fault::Forward);
    let got = receiver.wait_for("/hook", 3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3, "delivered once the registry answers");
    assert!(eventually(Duration::from_secs(5), || m.registry_waiting.get() == 0).await);
    // The registry's own "no such schema" through the same path is bad input.
    let unknown = avro::frame(
        987_654_321,
        &avro_value(&twin("rewards.redeemed", "u"), id, REWARDS_EVENT_SCHEMA)[avro::HEADER_LEN..],
    );
    testkit::produce_all(
        &testkit::producer(),
        &c.topics.events,
        &[keyed("u", unknown)],
    )
    .await;
    let invalid = testkit::read_topic(&c.topics.invalid, 1, Duration::from_secs(30)).await;
    assert_eq!(invalid.len(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_asked_with_basic_auth_over_https_trusting_registry_ca_bundle() {
    // An HTTPS endpoint of a throw-away CA plays the registry's lookup by id, recording what it
    // is asked; the client must trust it only through registry.ca_bundle and send the
    // credentials as basic auth.
    let stub = Receiver::start(Behaviour::Status(404)).await;
    let answer = serde_json::json!({ "schema": REWARDS_EVENT_SCHEMA }).to_string();
    stub.set_behaviour(
        "/apis/ccompat/v7/schemas/ids/7",
        Behaviour::Body(200, answer.into_bytes()),
    );
    let mut c = Config::default();
    c.registry.url = Some(format!("{}apis/ccompat/v7", stub.url("/")));
    c.registry.username = Some("sr-user".into());
    c.registry.password = Some("sr-pass".into());
    let event = avro_value(
        &twin("rewards.points_awarded", "u"),
        7,
        REWARDS_EVENT_SCHEMA,
    );
    // Without the CA: a TLS failure is an unavailable registry, never bad input.
    let untrusted = EventDecoder::new(&c.registry).unwrap();
    match untrusted.decode(Some(&event)).await {
        Err(avro::DecodeError::Unavailable(e)) => assert!(e.contains("certificate"), "{e}"),
        other => panic!("expected an unavailable registry, got {other:?}"),
    }
    c.registry.ca_bundle = Some(stub.ca_file());
    let decoder = EventDecoder::new(&c.registry).unwrap();
    let e = decoder.decode(Some(&event)).await.unwrap();
    assert_eq!(e.data["user_id"], "u");
    let asked = stub.received_on("/apis/ccompat/v7/schemas/ids/7");
    assert_eq!(asked.len(), 1, "looked up once, then cached");
    decoder.decode(Some(&event)).await.unwrap();
    assert_eq!(stub.received_on("/apis/ccompat/v7/schemas/ids/7").len(), 1);
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("sr-user:sr-pass")
    );
    assert_eq!(asked[0].header("authorization"), Some(expected.as_str()));
    // A 404 without Confluent's error code (here: any other id) is not "no such schema".
    match decoder.decode(Some(&avro::frame(8, &event[5..]))).await {
        Err(avro::DecodeError::Unavailable(_)) => {}
        other => panic!("a bare 404 is an unavailable registry, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_own_schema_with_every_mapped_type_gives_a_body_node_verifies() {
    use apache_avro::types::Value as A;
    let (c, receiver) = setup("avro-exotic", registry_url().await, "/hook").await;
    let schema_text = r#"{"type":"record","name":"ExoticEvent","namespace":"t","fields":[
      {"name":"event_type","type":"string"},
      {"name":"data","type":{"type":"record","name":"Exotic","fields":[
        {"name":"user_id","type":"string"},
        {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":8,"scale":2}},
        {"name":"raw","type":"bytes"},
        {"name":"digest","type":{"type":"fixed","name":"Digest","size":4}},
        {"name":"ratio","type":"double"},
        {"name":"huge","type":"double"},
        {"name":"share","type":"float"},
        {"name":"tier","type":{"type":"enum","name":"Tier","symbols":["silver","gold"]}},
        {"name":"counts","type":{"type":"map","values":"long"}},
        {"name":"born","type":{"type":"int","logicalType":"date"}},
        {"name":"id","type":{"type":"string","logicalType":"uuid"}},
        {"name":"seen_at","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"big","type":"long"},
        {"name":"maybe","type":["null","double"]},
        {"name":"text","type":"string"}]}},
      {"name":"timestamp","type":{"type":"long","logicalType":"timestamp-micros"}},
      {"name":"client_id","type":["null","string"],"default":null}]}"#;
    let schema = apache_avro::Schema::parse_str(schema_text).unwrap();
    let id = registry(&c)
        .register(&format!("{}exotic-value", c.topics.events), schema_text)
        .await
        .unwrap();
    let data = A::Record(vec![
        ("user_id".into(), A::String("u1".into())),
        ("price".into(), A::Decimal(vec![0x04, 0xe2].into())),
        ("raw".into(), A::Bytes(vec![0, 1, 2, 250])),
        ("digest".into(), A::Fixed(4, vec![1, 2, 3, 4])),
        ("ratio".into(), A::Double(f64::NAN)),
        ("huge".into(), A::Double(f64::INFINITY)),
        ("share".into(), A::Float(0.1)),
        ("tier".into(), A::Enum(1, "gold".into())),
        (
            "counts".into(),
            A::Map(
                [("b", 2), ("10", 3), ("a", 1)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), A::Long(v)))
                    .collect(),
            ),
        ),
        ("born".into(), A::Date(20103)),
        (
            "id".into(),
            A::Uuid("67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap()),
        ),
        ("seen_at".into(), A::TimestampMicros(1_736_937_000_123_456)),
        ("big".into(), A::Long(9_007_199_254_740_993)),
        ("maybe".into(), A::Union(1, Box::new(A::Double(2.5)))),
        ("text".into(), A::String("line\n\u{2028}\"q\" é 😀".into())),
    ]);
    let event = A::Record(vec![
        ("event_type".into(), A::String("partner.exotic".into())),
        ("data".into(), data),
        (
            "timestamp".into(),
            A::TimestampMicros(1_736_937_000_123_999),
        ),
        ("client_id".into(), A::Union(0, Box::new(A::Null))),
    ]);
    let value = avro::frame(id, &apache_avro::to_avro_datum(&schema, event).unwrap());
    testkit::produce_all(
        &testkit::producer(),
        &c.topics.events,
        &[keyed("u1", value)],
    )
    .await;
    let running = start(&c);
    let got = receiver.wait_for("/hook", 1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1);
    // What JavaScript must send for the mapping README "Avro events" documents.
    let expected_data = r#"{"user_id":"u1","price":"12.50","raw":"AAEC+g==","digest":"AQIDBA==","ratio":null,"huge":null,"share":0.1,"tier":"gold","counts":{"10":3,"a":1,"b":2},"born":"2025-01-15","id":"67e55044-10b1-426f-9247-bb680e5fe0c8","seen_at":"2025-01-15T10:30:00.123Z","big":9007199254740993,"maybe":2.5,"text":"line\n\u2028\"q\" é 😀"}"#;
    let r = &got[0];
    assert_eq!(r.signature_valid, Some(true));
    verify_in_node(&[(
        r.body.clone(),
        r.header("x-webhook-signature").unwrap().to_string(),
        "partner.exotic".into(),
        expected_data.into(),
        "2025-01-15T10:30:00.123Z".into(),
    )]);
    assert!(running
        .metrics
        .render()
        .contains("webhooks_inexact_numbers_total 1"));
    running.stop().await;
}
