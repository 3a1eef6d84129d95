//! Endpoints that misbehave, all at once, through the processor on the real broker: one
//! subscription per misbehaving endpoint (429 with and without `Retry-After`, 503 with a
//! `Retry-After` date beyond the longest tier, a body that drips one byte a second, a 1 TiB
//! body, a hung request, a refused connection, a certificate from an unknown CA, an expired
//! certificate, a certificate for another name, a redirect) and a healthy one beside them.
//! Every attempt 1 gets its outcome (and status where there is one) in the delivery log within
//! `http.request_timeout_ms`; the healthy endpoint is delivered at once; `Retry-After`
//! lengthens the next wait to the tier that covers it (capped at 25 s) and the retry is not
//! attempted before it; the processor then stops within its shutdown deadline.

use mgpass_testkit as testkit;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mgpass_webhooks::app::run_processor;
use mgpass_webhooks::delivery::DeliveryLogRecord;
use mgpass_webhooks::metrics::Metrics;
use rdkafka::Message;
use testkit::https::Leaf;
use testkit::receiver::{Behaviour, Receiver};
use tokio_util::sync::CancellationToken;

const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Scheduling, logging and a loaded machine on top of the request timeout.
const MARGIN_MS: u64 = 1_000;
const EVENTS: usize = 3;

/// What attempt 1 of every delivery to a subscription must log.
struct Expect {
    outcome: &'static str,
    status: Option<u16>,
    /// The error must contain one of these (lowercase), if any are given.
    error_has: &'static [&'static str],
    /// The wait from attempt 1 to attempt 2 the log must announce, ms.
    next_wait_ms: Option<i64>,
}

fn expect(outcome: &'static str, status: Option<u16>) -> Expect {
    Expect {
        outcome,
        status,
        error_has: &[],
        next_wait_ms: Some(1_000),
    }
}

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .timestamp_millis()
}

/// Reads the delivery log from the beginning until `done` holds for what was read, or `timeout`.
async fn read_log_until(
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[DeliveryLogRecord]) -> bool,
) -> Vec<DeliveryLogRecord> {
    let consumer = testkit::fixtures::reader_from_beginning(&testkit::bootstrap(), topic);
    let deadline = Instant::now() + timeout;
    let mut out: Vec<DeliveryLogRecord> = Vec::new();
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(serde_json::from_slice(m.payload().unwrap()).unwrap()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

fn attempts<'a>(
    log: &'a [DeliveryLogRecord],
    sub: &str,
    attempt: u32,
) -> Vec<&'a DeliveryLogRecord> {
    log.iter()
        .filter(|r| r.subscription_id == sub && r.attempt == attempt)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misbehaving_endpoint_gets_its_outcome_in_time_and_the_healthy_one_is_delivered() {
    // Every receiver has its own CA; the processor trusts all of them but `unknown_ca`'s.
    let ok = Receiver::start(Behaviour::Status(200)).await;
    let busy = Receiver::start(Behaviour::RetryAfter(429, "3".into())).await;
    let busy_plain = Receiver::start(Behaviour::Status(429)).await;
    let in_60s = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let unavailable = Receiver::start(Behaviour::RetryAfter(503, in_60s)).await;
    let drip = Receiver::start(Behaviour::Drip(200, Duration::from_secs(1))).await;
    let hang = Receiver::start(Behaviour::Hang).await;
    let huge = Receiver::start(Behaviour::Stream(200, 1 << 40)).await;
    let redirect = Receiver::start(Behaviour::Redirect).await;
    let unknown_ca = Receiver::start(Behaviour::Status(200)).await;
    let expired = Receiver::start_with_leaf(Behaviour::Status(200), Leaf::Expired).await;
    let wrong_name = Receiver::start_with_leaf(
        Behaviour::Status(200),
        Leaf::ForName("other.partner.example".into()),
    )
    .await;
    let refused_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };

    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("cas.pem");
    let trusted = [
        &ok,
        &busy,
        &busy_plain,
        &unavailable,
        &drip,
        &hang,
        &huge,
        &redirect,
        &expired,
        &wrong_name,
    ];
    std::fs::write(
        &bundle,
        trusted.iter().map(|r| r.ca_pem()).collect::<String>(),
    )
    .unwrap();

    let mut c = testkit::config("misbehave");
    c.http.ca_bundle = Some(bundle);
    c.http.request_timeout_ms = REQUEST_TIMEOUT_MS;
    c.http.connect_timeout_ms = 1_000;
    // The wrong-name endpoint is reached by a name: pinned to the receiver's loopback address,
    // which `testkit::config` allow-lists.
    c.http.resolve = vec!["hooks.partner.example=127.0.0.1".into()];
    c.delivery.shutdown_deadline_secs = 3;
    testkit::setup_topics(&c).await;

    let wrong_name_url = format!(
        "https://hooks.partner.example:{}/hook",
        wrong_name.addr().port()
    );
    let refused_url = format!("https://127.0.0.1:{refused_port}/hook");
    let subs: Vec<(&str, String, Expect)> = vec![
        ("ok", ok.url("/ok").to_string(), {
            let mut e = expect("success", Some(200));
            e.next_wait_ms = None;
            e
        }),
        ("huge", huge.url("/huge").to_string(), {
            let mut e = expect("success", Some(200));
            e.next_wait_ms = None;
            e
        }),
        (
            "busy",
            busy.url("/busy").to_string(),
            Expect {
                error_has: &["retry-after 3 s"],
                // Retry-After 3 s: the 5 s tier instead of the schedule's 1 s.
                next_wait_ms: Some(5_000),
                ..expect("http_error", Some(429))
            },
        ),
        (
            "busy_plain",
            busy_plain.url("/busy").to_string(),
            expect("http_error", Some(429)),
        ),
        (
            "unavailable",
            unavailable.url("/down").to_string(),
            Expect {
                error_has: &["retry-after"],
                // Retry-After a minute away: capped at the longest tier.
                next_wait_ms: Some(25_000),
                ..expect("http_error", Some(503))
            },
        ),
        (
            "drip",
            drip.url("/drip").to_string(),
            Expect {
                error_has: &["http.request_timeout_ms"],
                ..expect("timeout", None)
            },
        ),
        (
            "hang",
            hang.url("/hang").to_string(),
            Expect {
                error_has: &["http.request_timeout_ms"],
                ..expect("timeout", None)
            },
        ),
        (
            "redirect",
            redirect.url("/moved").to_string(),
            Expect {
                error_has: &["redirect not followed"],
                ..expect("redirect", Some(302))
            },
        ),
        (
            "refused",
            refused_url,
            Expect {
                error_has: &["refused"],
                ..expect("connect_error", None)
            },
        ),
        (
            "unknown_ca",
            unknown_ca.url("/hook").to_string(),
            Expect {
                error_has: &["unknownissuer"],
                ..expect("tls_error", None)
            },
        ),
        (
            "expired",
            expired.url("/hook").to_string(),
            Expect {
                error_has: &["expired"],
                ..expect("tls_error", None)
            },
        ),
        (
            "wrong_name",
            wrong_name_url,
            Expect {
                error_has: &["notvalidforname", "not valid for name"],
                ..expect("tls_error", None)
            },
        ),
    ];
    ok.set_secret("/ok", "secret-ok");
    let producer = testkit::producer();
    let records: Vec<(Option<String>, Option<Vec<u8>>)> = subs
        .iter()
        .map(|(id, url, _)| {
            let secret = format!("secret-{id}");
            (
                Some(id.to_string()),
                Some(testkit::subscription_json(id, url, &["*"], None, &secret)),
            )
        })
        .collect();
    testkit::produce_all(&producer, &c.topics.subscriptions, &records).await;
    let events: Vec<(Option<String>, Option<Vec<u8>>)> = (0..EVENTS)
        .map(|i| {
            let user = format!("u{i}");
            let value = testkit::event_json("rewards.points_awarded", &user);
            (Some(user), Some(value))
        })
        .collect();
    testkit::produce_all(&producer, &c.topics.events, &events).await;

    let cancel = CancellationToken::new();
    let processor = tokio::spawn(run_processor(
        c.clone(),
        Arc::new(Metrics::new()),
        cancel.clone(),
    ));

    // Every attempt 1, and attempt 2 of the Retry-After endpoints (the 503's 25 s later).
    let n = EVENTS;
    let log = read_log_until(&c.topics.delivery_log, Duration::from_secs(90), |log| {
        subs.iter()
            .all(|(id, _, _)| attempts(log, id, 1).len() >= n)
            && ["busy", "busy_plain", "unavailable"]
                .iter()
                .all(|id| attempts(log, id, 2).len() >= n)
    })
    .await;

    let mut report = BTreeMap::new();
    for (id, _, want) in &subs {
        let firsts = attempts(&log, id, 1);
        assert_eq!(firsts.len(), n, "{id}: {log:#?}");
        for r in &firsts {
            assert_eq!(r.outcome, want.outcome, "{id}: {r:?}");
            assert_eq!(r.http_status, want.status, "{id}: {r:?}");
            if !want.error_has.is_empty() {
                let error = r.error.as_deref().unwrap_or_default().to_lowercase();
                assert!(
                    want.error_has.iter().any(|w| error.contains(w)),
                    "{id}: none of {:?} in {error:?}",
                    want.error_has
                );
            }
            assert!(
                r.duration_ms <= REQUEST_TIMEOUT_MS + MARGIN_MS,
                "{id}: attempt took {} ms",
                r.duration_ms
            );
            if want.outcome == "timeout" {
                assert!(
                    r.duration_ms + 50 >= REQUEST_TIMEOUT_MS,
                    "{id}: gave up early, {} ms",
                    r.duration_ms
                );
            } else {
                assert!(r.duration_ms < MARGIN_MS, "{id}: {} ms", r.duration_ms);
            }
            let attempted = millis(&r.attempted_at);
            match want.next_wait_ms {
                None => assert_eq!(r.next_attempt_at, None, "{id}: {r:?}"),
                Some(wait) => {
                    let next = millis(r.next_attempt_at.as_deref().expect("a retry"));
                    let announced = next - attempted;
                    let slack = r.duration_ms as i64 + MARGIN_MS as i64;
                    assert!(
                        announced >= wait && announced <= wait + slack,
                        "{id}: next attempt {announced} ms after attempt 1, want {wait}: {r:?}"
                    );
                }
            }
        }
        let worst = firsts.iter().map(|r| r.duration_ms).max().unwrap();
        let next = firsts[0]
            .next_attempt_at
            .as_deref()
            .map(|at| millis(at) - millis(&firsts[0].attempted_at));
        report.insert(
            *id,
            format!(
                "{} status {:?}, slowest {worst} ms, next attempt after {next:?} ms, error {:?}",
                firsts[0].outcome, firsts[0].http_status, firsts[0].error
            ),
        );
    }

    // A retry is attempted no earlier than announced, the lengthened ones included.
    for id in ["busy", "busy_plain", "unavailable"] {
        for second in attempts(&log, id, 2) {
            let first = log
                .iter()
                .find(|r| r.delivery_id == second.delivery_id && r.attempt == 1)
                .expect("attempt 1 of the same delivery");
            let due = millis(first.next_attempt_at.as_deref().unwrap());
            let at = millis(&second.attempted_at);
            assert!(at >= due, "{id}: attempt 2 at {at}, due {due}");
            assert!(at <= due + 5_000, "{id}: attempt 2 {} ms late", at - due);
        }
    }

    // The healthy endpoint, beside all that: every delivery signed, arrived and logged within a
    // second of the first attempt of the whole batch (not behind the 2 s timeouts).
    let got = ok.wait_for("/ok", n, Duration::from_secs(5)).await;
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|r| r.signature_valid == Some(true)));
    let batch_start = subs
        .iter()
        .flat_map(|(id, _, _)| attempts(&log, id, 1))
        .map(|r| millis(&r.attempted_at))
        .min()
        .unwrap();
    for r in attempts(&log, "ok", 1) {
        let after = millis(&r.attempted_at) - batch_start;
        assert!(after < 1_000, "healthy attempt started {after} ms late");
        eprintln!(
            "healthy delivery {}: started {after} ms after the batch's first attempt, took {} ms",
            r.delivery_id, r.duration_ms
        );
        assert!(r.duration_ms < 1_000, "{r:?}");
    }
    // Nothing the bad endpoints received was followed or answered beyond one request each.
    assert!(redirect.received_on("/redirected/moved").is_empty());
    for r in [&unknown_ca, &expired, &wrong_name] {
        assert!(
            r.received().is_empty(),
            "no request past a failed handshake"
        );
    }

    for (id, line) in &report {
        eprintln!("attempt 1 of {id}: {line}");
    }
    let stopping = Instant::now();
    cancel.cancel();
    processor.await.unwrap().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        stopping.elapsed()
    );
}
