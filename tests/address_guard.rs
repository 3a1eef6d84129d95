//! The address guard end to end: literal addresses and names resolving to every refused class
//! (through a resolver the test controls) are refused without dialling, on both transports; the
//! allow-list and pinned names let the loopback receiver through; and the processor, on the
//! real broker, delivers to a public-looking name pinned to an allowed test address while a
//! private endpoint gets `address_refused` attempts on the retry schedule. Nothing but
//! 127.0.0.1 is ever dialled.

use mgpass_testkit as testkit;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mgpass_webhooks::config::HttpConfig;
use mgpass_webhooks::delivery::http::{AttemptResult, HttpClient, Outcome, Request, Transport};
use mgpass_webhooks::delivery::DeliveryLogRecord;
use mgpass_webhooks::metrics::{AttemptOutcome, Metrics};
use mgpass_webhooks::net_guard::{AddressClass, Lookup, Policy, Resolver};
use testkit::receiver::{Behaviour, Receiver};
use tokio_util::sync::CancellationToken;

const BODY: &str = r#"{"event_type":"rewards.points_awarded","data":{"user_id":"u1"},"timestamp":"2025-01-15T10:30:00.000Z"}"#;

/// One address of every refused class, as a literal and as the address a name resolves to.
const CLASSES: &[(&str, AddressClass)] = &[
    ("0.0.0.0", AddressClass::Unspecified),
    ("0.1.2.3", AddressClass::ThisNetwork),
    ("127.0.0.1", AddressClass::Loopback),
    ("10.0.0.5", AddressClass::Private),
    ("172.16.1.1", AddressClass::Private),
    ("192.168.1.1", AddressClass::Private),
    ("100.64.0.1", AddressClass::SharedCgnat),
    ("169.254.169.254", AddressClass::LinkLocal),
    ("192.0.0.8", AddressClass::IetfProtocol),
    ("192.0.2.1", AddressClass::Documentation),
    ("198.51.100.1", AddressClass::Documentation),
    ("203.0.113.1", AddressClass::Documentation),
    ("192.88.99.1", AddressClass::RelayAnycast),
    ("198.18.0.1", AddressClass::Benchmarking),
    ("224.0.0.1", AddressClass::Multicast),
    ("255.255.255.255", AddressClass::Broadcast),
    ("240.0.0.1", AddressClass::Reserved),
    ("::", AddressClass::Unspecified),
    ("::1", AddressClass::Loopback),
    ("fd00::1", AddressClass::UniqueLocal),
    ("fe80::1", AddressClass::LinkLocal),
    ("fec0::1", AddressClass::SiteLocal),
    ("ff02::1", AddressClass::Multicast),
    ("2001:db8::1", AddressClass::Documentation),
    ("2001::1", AddressClass::IetfProtocol),
    ("2001:2::1", AddressClass::Benchmarking),
    ("100::1", AddressClass::Discard),
    ("::ffff:10.0.0.5", AddressClass::Private),
    ("::127.0.0.1", AddressClass::Loopback),
    ("64:ff9b::a9fe:a9fe", AddressClass::LinkLocal),
    ("64:ff9b:1::c0a8:101", AddressClass::Private),
    ("2002:c0a8:0101::1", AddressClass::Private),
];

fn name_for(i: usize) -> String {
    format!("target-{i}.partner.example")
}

/// A guard over a lookup that resolves `target-<i>.partner.example` to the i-th address above.
fn resolver(config: &HttpConfig) -> Resolver {
    let map: Vec<(String, Vec<IpAddr>)> = CLASSES
        .iter()
        .enumerate()
        .map(|(i, (addr, _))| (name_for(i), vec![addr.parse().unwrap()]))
        .collect();
    Resolver::new(
        Policy::from_config(config).unwrap(),
        Lookup::fixed(map.iter().map(|(k, v)| (k.as_str(), v.clone()))),
    )
}

fn client(config: &HttpConfig, transport: Transport) -> HttpClient {
    HttpClient::with_resolver(config, transport, resolver(config)).expect("HTTP client")
}

async fn send(client: &HttpClient, url: &url::Url) -> AttemptResult {
    client
        .send(Request {
            url,
            body: Bytes::from_static(BODY.as_bytes()),
            signature: "sig",
            delivery_id: "dlv_guard",
            attempt: 1,
        })
        .await
}

fn host_of(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

fn assert_refused(result: &AttemptResult, addr: &str, class: AddressClass, what: &str) {
    assert_eq!(
        result.outcome,
        Outcome::AddressRefused,
        "{what}: {result:?}"
    );
    assert_eq!(result.status, None, "{what}");
    let error = result.error.as_deref().unwrap_or_default();
    assert!(
        error.contains(class.as_str()) && error.contains("not dialled"),
        "{what}: {error}"
    );
    let shown: IpAddr = addr.parse().unwrap();
    assert!(error.contains(&shown.to_string()), "{what}: {error}");
    assert!(
        result.duration < Duration::from_secs(1),
        "{what}: refused at once"
    );
}

macro_rules! for_both_transports {
    ($($case:ident),* $(,)?) => {
        mod direct {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Transport::Direct).await
            })*
        }
        mod proxied {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Transport::Proxied).await
            })*
        }
    };
}

for_both_transports!(
    every_refused_class_as_a_literal_is_refused_without_dialling,
    every_refused_class_behind_a_name_is_refused_without_dialling,
    the_allow_list_lets_loopback_through_by_range_or_by_name,
    a_pinned_public_looking_name_reaches_the_allowed_test_address,
);

async fn every_refused_class_as_a_literal_is_refused_without_dialling(transport: Transport) {
    let http = client(&HttpConfig::default(), transport);
    for (addr, class) in CLASSES {
        let url = url::Url::parse(&format!("https://{}:9/hook?token=t", host_of(addr))).unwrap();
        let result = send(&http, &url).await;
        assert_refused(&result, addr, *class, addr);
        assert!(!result.error.unwrap().contains("token"), "no URL in errors");
    }
}

async fn every_refused_class_behind_a_name_is_refused_without_dialling(transport: Transport) {
    let http = client(&HttpConfig::default(), transport);
    for (i, (addr, class)) in CLASSES.iter().enumerate() {
        let url = url::Url::parse(&format!("https://{}:9/hook", name_for(i))).unwrap();
        let result = send(&http, &url).await;
        assert_refused(&result, addr, *class, &name_for(i));
    }
}

async fn the_allow_list_lets_loopback_through_by_range_or_by_name(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let mut closed = receiver.http_config();
    closed.allow_private = Vec::new();
    let refused = send(&client(&closed, transport), &receiver.url("/hook")).await;
    assert_refused(
        &refused,
        "127.0.0.1",
        AddressClass::Loopback,
        "no allow-list",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.received().is_empty(), "nothing may be dialled");

    // By range (what the tests' receivers use), and by a single address.
    for allow in ["127.0.0.0/8", "127.0.0.1"] {
        let mut open = receiver.http_config();
        open.allow_private = vec![allow.into()];
        let ok = send(&client(&open, transport), &receiver.url("/hook")).await;
        assert_eq!(ok.outcome, Outcome::Success, "{allow}: {ok:?}");
    }
    // By host name: `localhost` resolves (here: is pinned) to loopback and is allowed as a name.
    let mut by_name = receiver.http_config();
    by_name.allow_private = vec!["localhost".into()];
    by_name.resolve = vec!["localhost=127.0.0.1".into()];
    let url = url::Url::parse(&format!(
        "https://localhost:{}/named",
        receiver.addr().port()
    ))
    .unwrap();
    let ok = send(&client(&by_name, transport), &url).await;
    assert_eq!(ok.outcome, Outcome::Success, "{ok:?}");
    // The name allows the name only, not the address it resolves to.
    let literal = send(&client(&by_name, transport), &receiver.url("/literal")).await;
    assert_eq!(literal.outcome, Outcome::AddressRefused, "{literal:?}");
    assert_eq!(receiver.received_on("/named").len(), 1);
    assert!(receiver.received_on("/literal").is_empty());
}

async fn a_pinned_public_looking_name_reaches_the_allowed_test_address(transport: Transport) {
    let receiver = Receiver::start_plain(Behaviour::Status(204)).await;
    let port = receiver.addr().port();
    let mut config = receiver.http_config();
    config.resolve = vec!["hooks.partner.example=127.0.0.1".into()];
    let url = url::Url::parse(&format!("http://hooks.partner.example:{port}/pinned")).unwrap();
    let ok = send(&client(&config, transport), &url).await;
    assert_eq!(ok.outcome, Outcome::Success, "{ok:?}");
    let got = receiver
        .wait_for("/pinned", 1, Duration::from_secs(5))
        .await;
    assert_eq!(
        got[0].header("host"),
        Some(format!("hooks.partner.example:{port}").as_str())
    );
    // A pin is not an exception: without the allow-list the pinned address is refused.
    config.allow_private = Vec::new();
    let refused = send(&client(&config, transport), &url).await;
    assert_refused(&refused, "127.0.0.1", AddressClass::Loopback, "pinned");
}

#[test]
fn the_outcome_label_is_address_refused() {
    assert_eq!(Outcome::AddressRefused.as_str(), "address_refused");
    assert!(Outcome::ALL.contains(&Outcome::AddressRefused));
}

/// The processor on the real broker, configured as an operator would for development: the
/// receiver's name pinned (`http.resolve`) to loopback, loopback allow-listed. A second
/// subscription points at a private address (a literal) and a third at a name pinned to the
/// metadata service: both get `address_refused` and follow the retry schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_delivers_to_a_pinned_name_and_refuses_private_endpoints_with_retries() {
    let receiver = Receiver::start_plain(Behaviour::Status(200)).await;
    let port = receiver.addr().port();
    let mut c = testkit::config("guard");
    c.http = receiver.http_config();
    c.http.resolve = vec![
        "hooks.partner.example=127.0.0.1".into(),
        "metadata.partner.example=169.254.169.254".into(),
    ];
    c.delivery.shutdown_deadline_secs = 3;
    testkit::setup_topics(&c).await;
    receiver.set_secret("/ok", "secret-ok");
    let sub = |id: &str, url: &str, secret: &str| {
        (
            Some(id.to_string()),
            Some(testkit::subscription_json(id, url, &["*"], None, secret)),
        )
    };
    let producer = testkit::producer();
    testkit::produce_all(
        &producer,
        &c.topics.subscriptions,
        &[
            sub(
                "ok",
                &format!("http://hooks.partner.example:{port}/ok"),
                "secret-ok",
            ),
            sub("private", "https://10.0.0.5/hook", "s2"),
            sub("metadata", "http://metadata.partner.example/latest", "s3"),
        ],
    )
    .await;
    testkit::produce_all(
        &producer,
        &c.topics.events,
        &[(
            Some("u1".into()),
            Some(testkit::event_json("rewards.points_awarded", "u1")),
        )],
    )
    .await;
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(mgpass_webhooks::app::run_processor(
        c.clone(),
        metrics.clone(),
        cancel.clone(),
    ));

    let got = receiver.wait_for("/ok", 1, Duration::from_secs(60)).await;
    assert_eq!(got[0].signature_valid, Some(true));
    assert_eq!(
        got[0].header("host"),
        Some(format!("hooks.partner.example:{port}").as_str())
    );
    // ok: 1 success; private and metadata: attempts 1 and 2 (one second later) refused.
    let records: Vec<DeliveryLogRecord> =
        testkit::read_topic(&c.topics.delivery_log, 5, Duration::from_secs(60))
            .await
            .iter()
            .map(|m| serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap())
            .collect();
    assert_eq!(records.len(), 5, "{records:#?}");
    for id in ["private", "metadata"] {
        let mut mine: Vec<&DeliveryLogRecord> =
            records.iter().filter(|r| r.subscription_id == id).collect();
        mine.sort_by_key(|r| r.attempt);
        assert_eq!(mine.len(), 2, "{id}: {records:#?}");
        for (n, r) in mine.iter().enumerate() {
            assert_eq!(r.attempt, n as u32 + 1);
            assert_eq!(r.outcome, "address_refused", "{r:?}");
            assert!(r.next_attempt_at.is_some(), "retry scheduled: {r:?}");
            let error = r.error.as_deref().unwrap();
            let class = if id == "private" {
                "private"
            } else {
                "link_local"
            };
            assert!(error.contains(class), "{error}");
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(1));
    let refused = metrics.attempts_total(AttemptOutcome::Http(Outcome::AddressRefused));
    assert!(refused >= 4, "{}", metrics.render());
    cancel.cancel();
    handle.await.unwrap().unwrap();
}

/// `subscriptions put` through the binary warns on stderr when the URL's host is refused by the
/// address guard or is plain http:// without `http.allow_http`, and still writes the record
/// (both are sending rules, judged at each attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_warns_when_a_url_is_refused_by_the_sending_rules() {
    let c = testkit::config("guardcli");
    testkit::setup_topics(&c).await;
    let put = |url: &str, extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mgpass-webhooks"));
        cmd.args(["--bootstrap-servers", &c.kafka.bootstrap_servers])
            .args([
                "--set",
                &format!("topics.subscriptions={}", c.topics.subscriptions),
            ])
            .args(extra)
            .args([
                "subscriptions",
                "put",
                "--id",
                "sub_x",
                "--url",
                url,
                "--secret",
                "a-secret-of-twenty-four-bytes",
            ])
            .env_remove("RUST_LOG");
        let out = cmd.output().expect("run the CLI");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = put("https://10.0.0.5/hook", &[]);
    assert!(
        err.contains("warning: sub_x") && err.contains("10.0.0.5 is private"),
        "{err}"
    );
    let err = put("https://[fd00::1]/hook", &[]);
    assert!(err.contains("unique_local"), "{err}");
    let err = put("http://127.0.0.1:9/hook", &[]);
    assert!(
        err.contains("http.allow_http") && err.contains("loopback"),
        "{err}"
    );
    // With the processor's development settings, the same URL draws no warning.
    let err = put(
        "http://127.0.0.1:9/hook",
        &[
            "--set",
            "http.allow_http=true",
            "--set",
            "http.allow_private=127.0.0.0/8",
        ],
    );
    assert!(!err.contains("warning"), "{err}");
    // A pinned public-looking name is checked by the pinned address.
    let err = put(
        "https://hooks.partner.example/hook",
        &[
            "--set",
            "http.resolve=hooks.partner.example=169.254.169.254",
        ],
    );
    assert!(err.contains("link_local"), "{err}");
    let records = testkit::read_topic(&c.topics.subscriptions, 5, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 5, "every put was written");
}
