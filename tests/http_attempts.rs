//! One HTTP attempt against a real in-process HTTPS receiver: what goes on the wire, and how every
//! kind of failure is classified. No Kafka needed.

use mgpass_testkit as testkit;

use std::time::{Duration, Instant};

use bytes::Bytes;
use mgpass_webhooks::config::HttpConfig;
use mgpass_webhooks::delivery::http::{AttemptResult, HttpClient, Outcome, Request, Transport};
use testkit::https::Leaf;
use testkit::receiver::{Behaviour, Receiver};

const BODY: &str = r#"{"event_type":"rewards.points_awarded","data":{"user_id":"usr_abc123","points":150,"note":"é🎉"},"timestamp":"2025-01-15T10:30:00.000Z"}"#;

async fn send(client: &HttpClient, url: &url::Url, signature: &str, attempt: u32) -> AttemptResult {
    client
        .send(Request {
            url,
            body: Bytes::from_static(BODY.as_bytes()),
            signature,
            delivery_id: "dlv_0123456789abcdef",
            attempt,
        })
        .await
}

/// The defaults, with the receivers' loopback allow-listed for the address guard.
fn loopback_allowed() -> HttpConfig {
    HttpConfig {
        allow_private: vec!["127.0.0.0/8".into()],
        ..HttpConfig::default()
    }
}

fn client(config: &HttpConfig, transport: Transport) -> HttpClient {
    let client = HttpClient::with_transport(config, transport).expect("HTTP client");
    assert_eq!(client.transport(), transport);
    client
}

/// Every case runs once per transport: both must behave the same on the wire and in outcomes.
/// (`Proxied` is reqwest; with no proxy in the environment it connects directly too.)
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
    success_sends_the_exact_body_and_every_header,
    server_error_is_an_http_error_with_its_status_and_excerpt,
    redirect_is_a_failure_and_is_never_followed,
    hung_endpoint_times_out_within_the_request_timeout,
    refused_connection_is_a_connect_error_without_the_url_in_the_error,
    untrusted_certificate_is_a_tls_error,
    plain_http_is_refused_without_sending_unless_allowed,
    big_response_is_truncated_to_the_configured_excerpt,
    sequence_fails_then_succeeds_and_reports_wrong_signatures,
    bad_ca_bundle_is_a_config_error_naming_the_setting,
    dripping_body_times_out_within_the_request_timeout,
    endless_huge_body_is_not_read_past_the_excerpt,
    expired_certificate_is_a_tls_error,
    certificate_for_another_name_is_a_tls_error,
    too_many_requests_reports_its_retry_after,
    a_server_without_http2_is_sent_http1,
    attempts_beyond_the_servers_stream_limit_wait_for_a_stream,
    a_connection_the_server_closed_is_noticed,
);

async fn success_sends_the_exact_body_and_every_header(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    receiver.set_secret("/hook", "whsec_test");
    let signature = mgpass_webhooks::signing::sign(b"whsec_test", BODY.as_bytes());
    let http = client(&receiver.http_config(), transport);

    let result = send(&http, &receiver.url("/hook"), &signature, 3).await;

    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    assert_eq!(result.status, Some(200));
    assert_eq!(result.error, None);
    assert_eq!(result.response_excerpt.as_deref(), Some("OK"));
    let got = receiver
        .recv_timeout(Duration::from_secs(5))
        .await
        .expect("request received");
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/hook");
    assert_eq!(got.body, BODY.as_bytes(), "body byte for byte");
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-webhook-signature"), Some(signature.as_str()));
    assert_eq!(got.header("x-webhook-id"), Some("dlv_0123456789abcdef"));
    assert_eq!(got.header("x-webhook-attempt"), Some("3"));
    let ua = got.header("user-agent").expect("user agent");
    assert!(
        ua.contains(&format!("mgpass-webhooks/{}", env!("CARGO_PKG_VERSION"))),
        "{ua}"
    );
    assert_eq!(got.signature_valid, Some(true));
    assert_eq!(got.version, "HTTP/2.0", "a server offering HTTP/2 gets it");
    assert_eq!(
        got.header("content-length"),
        Some(BODY.len().to_string().as_str())
    );
    assert!(receiver
        .recv_timeout(Duration::from_millis(200))
        .await
        .is_none());
}

async fn a_server_without_http2_is_sent_http1(transport: Transport) {
    let receiver = Receiver::start_http1_only(Behaviour::Status(200)).await;
    receiver.set_secret("/hook", "whsec_test");
    let signature = mgpass_webhooks::signing::sign(b"whsec_test", BODY.as_bytes());
    let http = client(&receiver.http_config(), transport);

    // The first attempt finds out (by ALPN) and the second goes straight to HTTP/1.1.
    for attempt in 1..=2 {
        let result = send(&http, &receiver.url("/hook"), &signature, attempt).await;
        assert_eq!(result.outcome, Outcome::Success, "{result:?}");
        let got = receiver
            .recv_timeout(Duration::from_secs(5))
            .await
            .expect("request received");
        assert_eq!(got.version, "HTTP/1.1");
        assert_eq!(got.body, BODY.as_bytes(), "body byte for byte");
        assert_eq!(
            got.header("x-webhook-attempt"),
            Some(attempt.to_string().as_str())
        );
        assert_eq!(got.signature_valid, Some(true));
    }
    assert_eq!(receiver.received().len(), 2, "each attempt sent once");
}

async fn attempts_beyond_the_servers_stream_limit_wait_for_a_stream(transport: Transport) {
    // The server allows 4 streams at a time and takes 100 ms per request: 40 attempts at once
    // on its one connection wait for streams, none fails, each is sent once.
    let receiver =
        Receiver::start_with_max_streams(Behaviour::Delay(Duration::from_millis(100), 200), 4)
            .await;
    let http = client(&receiver.http_config(), transport);
    let url = receiver.url("/hook");
    let started = Instant::now();
    let results = futures::future::join_all((0..40).map(|_| send(&http, &url, "sig", 1))).await;

    for result in &results {
        assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    }
    assert_eq!(receiver.received_on("/hook").len(), 40);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

async fn a_connection_the_server_closed_is_noticed(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let http = client(&receiver.http_config(), transport);
    let url = receiver.url("/hook");
    let result = send(&http, &url, "sig", 1).await;
    assert_eq!(result.outcome, Outcome::Success, "{result:?}");

    // The server goes away with its connections; the client's connection ends with it, and the
    // next attempt connects again, which is refused now.
    drop(receiver);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let result = send(&http, &url, "sig", 2).await;
    assert_eq!(result.outcome, Outcome::ConnectError, "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

async fn server_error_is_an_http_error_with_its_status_and_excerpt(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let http = client(&receiver.http_config(), transport);

    let result = send(&http, &receiver.url("/hook"), "sig", 1).await;

    assert_eq!(result.outcome, Outcome::HttpError);
    assert_eq!(result.status, Some(500));
    assert!(
        result.error.as_deref().unwrap().contains("500"),
        "{result:?}"
    );
    assert_eq!(
        result.response_excerpt.as_deref(),
        Some("Internal Server Error")
    );
}

async fn redirect_is_a_failure_and_is_never_followed(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Redirect).await;
    let http = client(&receiver.http_config(), transport);

    let result = send(&http, &receiver.url("/hook"), "sig", 1).await;

    assert_eq!(result.outcome, Outcome::Redirect, "{result:?}");
    assert_eq!(result.status, Some(302));
    assert!(
        result.error.as_deref().unwrap().contains("302"),
        "{result:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/hook"],
        "the redirect target must not be requested"
    );
}

async fn hung_endpoint_times_out_within_the_request_timeout(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Hang).await;
    let mut config = receiver.http_config();
    config.request_timeout_ms = 500;
    let http = client(&config, transport);

    let started = Instant::now();
    let result = send(&http, &receiver.url("/slow"), "sig", 1).await;
    let elapsed = started.elapsed();

    assert_eq!(result.outcome, Outcome::Timeout, "{result:?}");
    assert_eq!(result.status, None);
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(result.duration <= elapsed);
    // The hung request did arrive.
    assert_eq!(receiver.received_on("/slow").len(), 1);
}

async fn refused_connection_is_a_connect_error_without_the_url_in_the_error(transport: Transport) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let http = client(&loopback_allowed(), transport);
    let url = url::Url::parse(&format!("https://127.0.0.1:{port}/hook?token=s3cr3t")).unwrap();

    let result = send(&http, &url, "sig", 1).await;

    assert_eq!(result.outcome, Outcome::ConnectError, "{result:?}");
    assert_eq!(result.status, None);
    let error = result.error.expect("error text");
    assert!(
        !error.contains("s3cr3t") && !error.contains("127.0.0.1"),
        "{error}"
    );
}

async fn untrusted_certificate_is_a_tls_error(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    // Built-in web roots only: the receiver's test CA is unknown.
    let http = client(&loopback_allowed(), transport);

    let result = send(&http, &receiver.url("/hook"), "sig", 1).await;

    assert_eq!(result.outcome, Outcome::TlsError, "{result:?}");
    assert_eq!(result.status, None);
    assert!(
        result
            .error
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{result:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.received().is_empty());
}

async fn plain_http_is_refused_without_sending_unless_allowed(transport: Transport) {
    let receiver = Receiver::start_plain(Behaviour::Status(204)).await;
    let refused = client(&HttpConfig::default(), transport);

    let result = send(&refused, &receiver.url("/hook"), "sig", 1).await;

    assert_eq!(result.outcome, Outcome::RequestError, "{result:?}");
    assert!(
        result.error.as_deref().unwrap().contains("http.allow_http"),
        "{result:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.received().is_empty(), "nothing may be sent");

    // Local development: allowed explicitly.
    let allowed = client(&receiver.http_config(), transport);
    let result = send(&allowed, &receiver.url("/hook"), "sig", 1).await;
    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    assert_eq!(result.status, Some(204));
    assert_eq!(result.response_excerpt, None);
    assert_eq!(receiver.received_on("/hook").len(), 1);
}

async fn big_response_is_truncated_to_the_configured_excerpt(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Body(200, vec![b'x'; 1024 * 1024])).await;
    let mut config = receiver.http_config();
    config.max_response_bytes = 4096;
    let http = client(&config, transport);

    let started = Instant::now();
    let result = send(&http, &receiver.url("/hook"), "sig", 1).await;

    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    assert_eq!(result.response_excerpt.as_deref().map(str::len), Some(4096));
    assert!(started.elapsed() < Duration::from_secs(3));
}

async fn sequence_fails_then_succeeds_and_reports_wrong_signatures(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    receiver.set_behaviour("/flaky", Behaviour::Sequence(vec![500, 503]));
    receiver.set_secret("/flaky", "right");
    let http = client(&receiver.http_config(), transport);
    let good = mgpass_webhooks::signing::sign(b"right", BODY.as_bytes());
    let bad = mgpass_webhooks::signing::sign(b"wrong", BODY.as_bytes());

    let mut statuses = Vec::new();
    for (attempt, signature) in [(1, &good), (2, &bad), (3, &good), (4, &good)] {
        let result = send(&http, &receiver.url("/flaky"), signature, attempt).await;
        statuses.push((result.outcome, result.status));
    }

    assert_eq!(
        statuses,
        [
            (Outcome::HttpError, Some(500)),
            (Outcome::HttpError, Some(503)),
            (Outcome::Success, Some(200)),
            (Outcome::Success, Some(200)),
        ]
    );
    let got = receiver.wait_for("/flaky", 4, Duration::from_secs(5)).await;
    let verdicts: Vec<_> = got.iter().map(|r| r.signature_valid).collect();
    assert_eq!(verdicts, [Some(true), Some(false), Some(true), Some(true)]);
    let attempts: Vec<_> = got
        .iter()
        .map(|r| r.header("x-webhook-attempt").unwrap().to_string())
        .collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
}

async fn bad_ca_bundle_is_a_config_error_naming_the_setting(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-pem.txt");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_der = dir.path().join("bad-der.pem");
    std::fs::write(
        &bad_der,
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");

    for path in [missing, not_pem, bad_pem, bad_der] {
        let config = HttpConfig {
            ca_bundle: Some(path.clone()),
            ..HttpConfig::default()
        };
        let err = HttpClient::with_transport(&config, transport)
            .expect_err(&format!("{path:?} must be refused"));
        let text = format!("{err:#}");
        assert!(text.contains("http.ca_bundle"), "{path:?}: {text}");
    }
}

/// Headers and a 200 at once, then one byte a second: the request timeout covers reading the
/// body, so the attempt is a timeout (not a success) and ends at the timeout.
async fn dripping_body_times_out_within_the_request_timeout(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Drip(200, Duration::from_secs(1))).await;
    let mut config = receiver.http_config();
    config.request_timeout_ms = 1_500;
    let http = client(&config, transport);

    let started = Instant::now();
    let result = send(&http, &receiver.url("/drip"), "sig", 1).await;
    let elapsed = started.elapsed();

    assert_eq!(result.outcome, Outcome::Timeout, "{result:?}");
    assert_eq!(result.status, None);
    assert!(
        result
            .error
            .as_deref()
            .unwrap()
            .contains("http.request_timeout_ms"),
        "{result:?}"
    );
    assert!(elapsed >= Duration::from_millis(1_450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(receiver.received_on("/drip").len(), 1);
}

/// A 1 TiB body generated as it is read: only the excerpt is read, at once.
async fn endless_huge_body_is_not_read_past_the_excerpt(transport: Transport) {
    let receiver = Receiver::start(Behaviour::Stream(200, 1 << 40)).await;
    let http = client(&receiver.http_config(), transport);

    let started = Instant::now();
    let result = send(&http, &receiver.url("/huge"), "sig", 1).await;

    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    assert_eq!(result.status, Some(200));
    assert_eq!(result.response_excerpt.as_deref().map(str::len), Some(4096));
    assert!(started.elapsed() < Duration::from_secs(3), "{result:?}");
}

/// A certificate from a trusted CA, expired: refused in the handshake, nothing sent.
async fn expired_certificate_is_a_tls_error(transport: Transport) {
    let receiver = Receiver::start_with_leaf(Behaviour::Status(200), Leaf::Expired).await;
    let http = client(&receiver.http_config(), transport);

    let result = send(&http, &receiver.url("/hook"), "sig", 1).await;

    assert_eq!(result.outcome, Outcome::TlsError, "{result:?}");
    assert_eq!(result.status, None);
    let error = result.error.as_deref().unwrap().to_lowercase();
    assert!(error.contains("expired"), "{result:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.received().is_empty());
}

/// The URL names `hooks.partner.example` (pinned to the receiver's address); the certificate,
/// from a trusted CA, is for another name only.
async fn certificate_for_another_name_is_a_tls_error(transport: Transport) {
    let receiver = Receiver::start_with_leaf(
        Behaviour::Status(200),
        Leaf::ForName("other.partner.example".into()),
    )
    .await;
    let mut config = receiver.http_config();
    config.resolve = vec!["hooks.partner.example=127.0.0.1".into()];
    let http = client(&config, transport);
    let url = url::Url::parse(&format!(
        "https://hooks.partner.example:{}/hook",
        receiver.addr().port()
    ))
    .unwrap();

    let result = send(&http, &url, "sig", 1).await;

    assert_eq!(result.outcome, Outcome::TlsError, "{result:?}");
    assert_eq!(result.status, None);
    let error = result.error.as_deref().unwrap().to_lowercase();
    assert!(
        error.contains("not valid for name") || error.contains("notvalidforname"),
        "{result:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.received().is_empty());

    // The same receiver by a name its certificate has: delivered (the failure was the name).
    config.resolve = vec!["other.partner.example=127.0.0.1".into()];
    let http = client(&config, transport);
    let url = url::Url::parse(&format!(
        "https://other.partner.example:{}/hook",
        receiver.addr().port()
    ))
    .unwrap();
    let result = send(&http, &url, "sig", 1).await;
    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
}

/// 429 and 503 with `Retry-After` (seconds, an HTTP date) are HTTP errors carrying the wait.
async fn too_many_requests_reports_its_retry_after(transport: Transport) {
    let receiver = Receiver::start(Behaviour::RetryAfter(429, "3".into())).await;
    let in_20s = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(20));
    receiver.set_behaviour("/dated", Behaviour::RetryAfter(503, in_20s));
    receiver.set_behaviour("/other", Behaviour::RetryAfter(500, "3".into()));
    let http = client(&receiver.http_config(), transport);

    let result = send(&http, &receiver.url("/busy"), "sig", 1).await;
    assert_eq!(result.outcome, Outcome::HttpError, "{result:?}");
    assert_eq!(result.status, Some(429));
    assert_eq!(result.retry_after, Some(Duration::from_secs(3)));
    assert!(
        result
            .error
            .as_deref()
            .unwrap()
            .contains("429 Too Many Requests (Retry-After 3 s)"),
        "{result:?}"
    );

    let result = send(&http, &receiver.url("/dated"), "sig", 1).await;
    assert_eq!(result.outcome, Outcome::HttpError, "{result:?}");
    assert_eq!(result.status, Some(503));
    let wait = result.retry_after.expect("a wait");
    assert!(
        wait > Duration::from_secs(17) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );

    let result = send(&http, &receiver.url("/other"), "sig", 1).await;
    assert_eq!((result.status, result.retry_after), (Some(500), None));
}
