//! The admin console's API and pages on the real broker, every action and every refusal: no
//! session, a forged or logged-out session, a wrong or missing CSRF token, the viewer role, an
//! untrusted proxy, invalid subscriptions (each error naming its field), the login rate limit;
//! and what the actions do: subscriptions created, edited, disabled, rotated and deleted through
//! the CLI's own functions (the binary's `subscriptions get` sees the same), a test webhook
//! delivered signed to its one subscription and listed from the delivery log, a failed delivery
//! previewed and replayed with progress. The audit topic gets a record per change, never a
//! secret. The console and the processor run in-process; the receiver is the test kit's.

use mgpass_testkit as testkit;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mgpass_webhooks::config::Config;
use mgpass_webhooks::delivery::{DeliveryTask, ReplayMarker};
use mgpass_webhooks::kafka::SourceRef;
use mgpass_webhooks::metrics::Metrics;
use rdkafka::message::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::console::{account, Client};
use testkit::receiver::{Behaviour, Receiver};
use tokio_util::sync::CancellationToken;

const ADMIN_PW: &str = "admin password 0123";
const VIEWER_PW: &str = "viewer password 0123";

/// A test's config: own topics, accounts `admin` and `viewer`, a fixed session key.
async fn setup(name: &str, receiver: Option<&Receiver>) -> Config {
    let mut c = testkit::config(name);
    if let Some(r) = receiver {
        c.http = r.http_config();
    }
    c.http.request_timeout_ms = 2_000;
    c.http.connect_timeout_ms = 1_000;
    c.delivery.shutdown_deadline_secs = 3;
    c.console.auth = "accounts".into();
    c.console.session_key = "test-session-key-0123456789abcdef-0123".into();
    c.console.accounts = vec![
        account("admin", ADMIN_PW, "admin"),
        account("viewer", VIEWER_PW, "viewer"),
    ];
    testkit::setup_topics(&c).await;
    c
}

async fn admin(console: &testkit::console::Running) -> Client {
    let mut a = Client::new(console);
    let r = a.login("admin", ADMIN_PW).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    a
}

fn processor(
    c: &Config,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let cancel = CancellationToken::new();
    let h = tokio::spawn(mgpass_webhooks::app::run_processor(
        c.clone(),
        Arc::new(Metrics::new()),
        cancel.clone(),
    ));
    (cancel, h)
}

/// Every audit record of the test's topic.
async fn audit(c: &Config) -> Vec<Value> {
    testkit::read_topic(&c.topics.audit, 10_000, Duration::from_secs(4))
        .await
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect()
}

fn actions(records: &[Value]) -> Vec<(String, String, String, String)> {
    records
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("actor"), s("action"), s("target"), s("outcome"))
        })
        .collect()
}

fn sub_body(id: &str, url: &str) -> Value {
    json!({"id": id, "url": url, "event_types": ["*"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_but_livez_answers_without_a_login_and_every_answer_has_secure_headers() {
    let c = setup("console-auth", None).await;
    let console = testkit::console::start(&c).await;
    let anon = Client::new(&console);
    let live = anon.get("/livez").await;
    assert_eq!(live.status, StatusCode::OK);
    let ready = anon.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.text.as_str()),
        (StatusCode::OK, "ready\n")
    );
    for path in [
        "/api/me",
        "/api/subscriptions",
        "/api/subscriptions/x",
        "/api/failed",
        "/api/replay/preview?all=true",
        "/api/subscriptions/x/deliveries",
    ] {
        let r = anon.get(path).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.text);
        assert_eq!(r.json()["error"], "login required", "{path}");
    }
    for path in ["/", "/subscriptions", "/subscriptions/new", "/failed"] {
        let r = anon.get(path).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.header("location"), Some("/login"), "{path}");
    }
    let r = anon
        .call(
            "POST",
            "/api/subscriptions",
            Some(sub_body("s", "https://p.example/h")),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a change without a session"
    );
    let r = anon
        .call(
            "POST",
            "/api/replay",
            Some(json!({"all": true, "confirm": true})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a replay without a session"
    );

    // Secure headers, on a public page and a guarded one alike.
    let login_page = anon.get("/login").await;
    let mut a = Client::new(&console);
    let answer = a.login("admin", ADMIN_PW).await;
    let page = a.get("/subscriptions").await;
    assert_eq!(page.status, StatusCode::OK);
    for r in [&login_page, &page, &live] {
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    // The session cookie: signed, HttpOnly, SameSite, Secure, with an expiry.
    let set = answer.header("set-cookie").unwrap();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Max-Age=28800",
        "Path=/",
    ] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    // Every asset is served by the binary; no page names another origin.
    for asset in ["/static/console.css", "/static/console.js"] {
        assert_eq!(anon.get(asset).await.status, StatusCode::OK, "{asset}");
    }
    assert!(
        !page.text.contains("http://") && !page.text.contains("https://"),
        "no CDN"
    );

    // A forged session: the user changed in the cookie, or another key's signature.
    let cookie = a.cookie.clone().unwrap();
    let mut forged = Client::new(&console);
    forged.cookie = Some(cookie.replace(&hex("admin"), &hex("root")));
    assert_eq!(forged.get("/api/me").await.status, StatusCode::UNAUTHORIZED);
    forged.cookie = Some(format!("{}0", cookie));
    assert_eq!(forged.get("/api/me").await.status, StatusCode::UNAUTHORIZED);

    // Logged out: the same cookie no longer works.
    let csrf = a.csrf.clone().unwrap();
    let out = a.form("/logout", &[("_csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(a.get("/api/me").await.status, StatusCode::UNAUTHORIZED);

    let trail = actions(&audit(&c).await);
    assert!(
        trail.contains(&("admin".into(), "login".into(), "admin".into(), "ok".into())),
        "{trail:?}"
    );
    assert!(
        trail.contains(&("admin".into(), "logout".into(), "admin".into(), "ok".into())),
        "{trail:?}"
    );
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_checked_rate_limited_and_audited() {
    let mut c = setup("console-login", None).await;
    c.console.login_attempts_per_minute = 3;
    let console = testkit::console::start(&c).await;
    let mut u = Client::new(&console);
    let r = u.login("admin", "wrong password!!").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text.contains("wrong user name or password"), "{}", r.text);
    assert!(r.header("set-cookie").is_none());
    let r = u.login("nobody", ADMIN_PW).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "an unknown user, the same answer"
    );
    // A login form token that is not ours.
    let r = u
        .form(
            "/login",
            &[
                ("_login", "1.00"),
                ("username", "admin"),
                ("password", ADMIN_PW),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // The third attempt from this address is allowed, the fourth is not, even with the right
    // password.
    let r = u.login("admin", "wrong again!!!!").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = u.login("admin", ADMIN_PW).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    assert!(r.header("set-cookie").is_none());
    let trail = actions(&audit(&c).await);
    let refused = trail
        .iter()
        .filter(|t| t.1 == "login" && t.3 == "refused")
        .count();
    assert_eq!(
        refused, 3,
        "every checked wrong login is audited: {trail:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_manages_subscriptions_with_the_clis_validation_and_every_change_is_audited() {
    let c = setup("console-subs", None).await;
    let console = testkit::console::start(&c).await;
    let a = admin(&console).await;

    // Create with a generated secret: shown once, then only its fingerprint.
    let r = a
        .call(
            "POST",
            "/api/subscriptions",
            Some(
                json!({"id": "partner-a", "url": "https://a.partner.example/hook",
                        "event_types": ["rewards.points_awarded", "cashback.processed"],
                        "client_id": "app-1"}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let created = r.json();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && secret.len() > 40);
    let fp = created["subscription"]["secret_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fp,
        mgpass_webhooks::ops::admin::fingerprint(&mgpass_webhooks::secret::Secret::new(&secret))
    );
    // With a secret of the admin's own: no secret in the answer.
    let own = "partner-b-own-secret-0123456789";
    let r = a
        .call(
            "POST",
            "/api/subscriptions",
            Some(
                json!({"id": "partner-b", "url": "https://b.partner.example/hook",
                        "event_types": ["*"], "secret": own, "enabled": false}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.json()["secret"].is_null());

    // Invalid input: each error names its field, nothing is written.
    let bad: [(Value, &str, &str); 6] = [
        (
            json!({"id": "partner-a", "url": "https://x.example/h", "event_types": ["*"]}),
            "id",
            "exists",
        ),
        (
            json!({"id": "bad id!", "url": "https://x.example/h", "event_types": ["*"]}),
            "id",
            "contains",
        ),
        (
            json!({"id": "c", "url": "ftp://x.example/h", "event_types": ["*"]}),
            "url",
            "scheme",
        ),
        (
            json!({"id": "c", "url": "https://x.example/h", "event_types": ["rewards.nope"]}),
            "event_types",
            "unknown event type",
        ),
        (
            json!({"id": "c", "url": "https://x.example/h", "event_types": []}),
            "event_types",
            "must not be empty",
        ),
        (
            json!({"id": "c", "url": "https://x.example/h", "event_types": ["*"], "secret": "short"}),
            "secret",
            "at least 24",
        ),
    ];
    for (body, field, text) in bad {
        let r = a
            .call("POST", "/api/subscriptions", Some(body.clone()))
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        let msg = r.json()["fields"][field]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(msg.contains(text), "{body}: field {field}: {}", r.text);
        assert!(
            !r.text.contains("short\""),
            "a refused secret is not echoed"
        );
    }
    // Every field's error at once.
    let r = a
        .call(
            "POST",
            "/api/subscriptions",
            Some(json!({"id": "c", "url": "ftp://x", "event_types": ["nope"], "client_id": "", "secret": "short"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields = r.json()["fields"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(fields, ["event_types", "secret", "url"], "{}", r.text);
    let r = a
        .call(
            "PUT",
            "/api/subscriptions/partner-a",
            Some(json!({"url": "ftp://x", "event_types": []})),
        )
        .await;
    let fields = r.json()["fields"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(fields, ["event_types", "url"], "an edit too: {}", r.text);
    let r = a
        .call("POST", "/api/subscriptions", Some(json!({"id": 5})))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    // The form shows the error beside its field.
    let csrf = a.csrf.clone().unwrap();
    let r = a
        .form(
            "/subscriptions",
            &[
                ("_csrf", &csrf),
                ("id", "c"),
                ("url", "ftp://x"),
                ("event_types", "*"),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text.contains("id=\"error-url\""), "{}", r.text);
    assert!(
        r.text.contains("value=\"ftp://x\""),
        "the form keeps what was typed"
    );

    // Listing: search, status filter, fingerprints only.
    let list = a.get("/api/subscriptions").await.json();
    let ids: Vec<&str> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["partner-a", "partner-b"]);
    assert_eq!(find(&a, "q=app-1").await, ["partner-a"], "by client scope");
    assert_eq!(
        find(&a, "q=B.PARTNER").await,
        ["partner-b"],
        "by URL, any case"
    );
    assert_eq!(find(&a, "q=cashback").await, ["partner-a"], "by event type");
    assert_eq!(
        find(&a, &format!("q={fp}")).await,
        ["partner-a"],
        "by fingerprint"
    );
    assert_eq!(find(&a, "status=disabled").await, ["partner-b"]);
    let page = a.get("/subscriptions?q=partner").await;
    assert!(
        page.text.contains(&fp) && page.text.contains("app-1") && page.text.contains("disabled")
    );

    // Edit, disable, enable, rotate, delete.
    let r = a
        .call(
            "PUT",
            "/api/subscriptions/partner-a",
            Some(json!({"url": "https://a2.partner.example/hook", "event_types": ["*"], "client_id": null, "enabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json()["secret_fingerprint"],
        fp.as_str(),
        "an edit keeps the secret"
    );
    let r = a
        .call(
            "PUT",
            "/api/subscriptions/partner-a",
            Some(json!({"url": "nope", "event_types": ["*"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["fields"]["url"].is_string(), "{}", r.text);
    let r = a
        .call(
            "PUT",
            "/api/subscriptions/ghost",
            Some(json!({"url": "https://g.example/", "event_types": ["*"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = a
        .call("POST", "/api/subscriptions/partner-a/disable", None)
        .await;
    assert_eq!(r.json()["enabled"], false, "{}", r.text);
    let r = a
        .call("POST", "/api/subscriptions/partner-a/enable", None)
        .await;
    assert_eq!(r.json()["enabled"], true, "{}", r.text);
    let r = a
        .call("POST", "/api/subscriptions/partner-a/rotate-secret", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let rotated = r.json()["secret"].as_str().unwrap().to_string();
    let new_fp = r.json()["subscription"]["secret_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(rotated, secret);
    assert_ne!(new_fp, fp);
    // The CLI reads what the console wrote.
    let out = cli(&c, &["subscriptions", "get", "--id", "partner-a"]).await;
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["url"], "https://a2.partner.example/hook");
    assert_eq!(got["secret_fingerprint"], new_fp.as_str());
    assert!(!out.contains(&rotated));
    // And the CLI changes what the console shows.
    let out = cli(&c, &["subscriptions", "disable", "--id", "partner-a"]).await;
    assert!(out.contains("\"enabled\":false"), "{out}");
    assert_eq!(
        a.get("/api/subscriptions/partner-a").await.json()["enabled"],
        false
    );
    let out = cli(&c, &["subscriptions", "rotate-secret", "--id", "partner-a"]).await;
    let cli_secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap()
        .to_string();
    let shown = a.get("/api/subscriptions/partner-a").await.json();
    assert_eq!(
        shown["secret_fingerprint"].as_str().unwrap(),
        mgpass_webhooks::ops::admin::fingerprint(&mgpass_webhooks::secret::Secret::new(
            &cli_secret
        ))
    );
    cli(&c, &["subscriptions", "enable", "--id", "partner-a"]).await;
    let r = a.call("DELETE", "/api/subscriptions/partner-b", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        a.get("/api/subscriptions/partner-b").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.call("DELETE", "/api/subscriptions/partner-b", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // The audit trail: who did what, never a secret.
    let records = audit(&c).await;
    let trail = actions(&records);
    for (action, target) in [
        ("subscription.create", "partner-a"),
        ("subscription.create", "partner-b"),
        ("subscription.update", "partner-a"),
        ("subscription.disable", "partner-a"),
        ("subscription.enable", "partner-a"),
        ("subscription.rotate_secret", "partner-a"),
        ("subscription.delete", "partner-b"),
    ] {
        assert!(
            trail.contains(&("admin".into(), action.into(), target.into(), "ok".into())),
            "{action} {target} missing: {trail:?}"
        );
    }
    assert!(
        trail
            .iter()
            .any(|t| t.1 == "subscription.create" && t.3 == "refused"),
        "refusals too"
    );
    let text = records.iter().map(|r| r.to_string()).collect::<String>();
    for s in [&secret, &rotated, &own.to_string()] {
        assert!(!text.contains(s.as_str()), "a secret in the audit topic");
    }
    assert!(text.contains(&new_fp), "fingerprints are audited");
}

/// The ids the listing shows for query `q`.
async fn find(a: &Client, q: &str) -> Vec<String> {
    let l = a.get(&format!("/api/subscriptions?{q}")).await.json();
    l["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Runs the real binary with this test's topics.
async fn cli(c: &Config, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mgpass-webhooks"));
    cmd.arg("--bootstrap-servers")
        .arg(&c.kafka.bootstrap_servers);
    for (setting, topic) in c.topics.all() {
        cmd.arg("--set").arg(format!("{setting}={topic}"));
    }
    cmd.arg("--set").arg("log.level=warn").args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run the binary"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_the_sessions_csrf_token() {
    let c = setup("console-csrf", None).await;
    let console = testkit::console::start(&c).await;
    let mut a = admin(&console).await;
    let other = admin(&console).await;
    let own = a.csrf.clone().unwrap();
    let body = || Some(sub_body("s1", "https://p.example/h"));
    for (token, name) in [
        (None, "no token"),
        (Some("0".repeat(32)), "a wrong token"),
        (other.csrf.clone(), "another session's token"),
        (Some(own[..31].to_string()), "a cut token"),
    ] {
        a.csrf = token;
        for (method, path) in [
            ("POST", "/api/subscriptions"),
            ("PUT", "/api/subscriptions/s1"),
            ("DELETE", "/api/subscriptions/s1"),
            ("POST", "/api/subscriptions/s1/rotate-secret"),
            ("POST", "/api/subscriptions/s1/test"),
            ("POST", "/api/replay"),
        ] {
            let r = a.call(method, path, body()).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{name}: {method} {path}: {}",
                r.text
            );
            assert!(r.text.contains("CSRF"), "{}", r.text);
        }
    }
    // Forms: without `_csrf`, or with a wrong one.
    for pairs in [
        vec![
            ("id", "s1"),
            ("url", "https://p.example/h"),
            ("event_types", "*"),
        ],
        vec![
            ("_csrf", "nope"),
            ("id", "s1"),
            ("url", "https://p.example/h"),
            ("event_types", "*"),
        ],
    ] {
        let r = a.form("/subscriptions", &pairs).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    }
    assert_eq!(
        a.form("/logout", &[]).await.status,
        StatusCode::FORBIDDEN,
        "even logout"
    );
    a.csrf = Some(own.clone());
    assert!(
        a.get("/api/subscriptions").await.json()["subscriptions"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was written"
    );
    // With the token it works, as a header and as a form field.
    assert_eq!(
        a.call("POST", "/api/subscriptions", body()).await.status,
        StatusCode::CREATED
    );
    let r = a
        .form(
            "/subscriptions",
            &[
                ("_csrf", &own),
                ("id", "s2"),
                ("url", "https://p.example/h"),
                ("event_types", "*"),
                ("enabled", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(
        r.text.contains("shown this once"),
        "the generated secret page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_everything_and_changes_nothing() {
    let c = setup("console-viewer", None).await;
    let console = testkit::console::start(&c).await;
    let a = admin(&console).await;
    assert_eq!(
        a.call(
            "POST",
            "/api/subscriptions",
            Some(sub_body("s1", "https://p.example/h"))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let mut v = Client::new(&console);
    assert_eq!(
        v.login("viewer", VIEWER_PW).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(v.get("/api/me").await.json()["role"], "viewer");
    for path in [
        "/api/subscriptions",
        "/api/subscriptions/s1",
        "/subscriptions",
        "/subscriptions/s1",
        "/failed",
        "/api/failed",
        "/api/replay/preview?all=true",
        "/api/subscriptions/s1/deliveries",
    ] {
        let r = v.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }
    let detail = v.get("/subscriptions/s1").await.text;
    assert!(
        !detail.contains("Send test webhook") && !detail.contains("Rotate secret"),
        "no buttons for a viewer"
    );
    for (method, path, body) in [
        (
            "POST",
            "/api/subscriptions",
            Some(sub_body("s2", "https://p.example/h")),
        ),
        (
            "PUT",
            "/api/subscriptions/s1",
            Some(json!({"url": "https://q.example/", "event_types": ["*"]})),
        ),
        ("DELETE", "/api/subscriptions/s1", None),
        ("POST", "/api/subscriptions/s1/disable", None),
        ("POST", "/api/subscriptions/s1/rotate-secret", None),
        ("POST", "/api/subscriptions/s1/test", None),
        (
            "POST",
            "/api/replay",
            Some(json!({"all": true, "confirm": true})),
        ),
    ] {
        let r = v.call(method, path, body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.text
        );
        assert!(r.text.contains("viewer"), "{}", r.text);
    }
    let csrf = v.csrf.clone().unwrap();
    let r = v
        .form(
            "/replay",
            &[("_csrf", &csrf), ("all", "true"), ("confirm", "true")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "the replay form too");
    let s = a.get("/api/subscriptions/s1").await.json();
    assert_eq!(
        (s["url"].as_str(), s["enabled"].as_bool()),
        (Some("https://p.example/h"), Some(true)),
        "unchanged"
    );
    let trail = actions(&audit(&c).await);
    let denied = trail
        .iter()
        .filter(|t| t.0 == "viewer" && t.1 == "denied")
        .count();
    assert_eq!(denied, 8, "every refused change is audited: {trail:?}");
    // A viewer may log out.
    assert_eq!(
        v.form("/logout", &[("_csrf", &csrf)]).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_identity_counts_only_from_the_trusted_proxy() {
    let mut c = setup("console-proxy", None).await;
    c.console.auth = "proxy".into();
    c.console.accounts.clear();
    c.console.proxy_user_header = "X-Auth-Request-User".into();
    c.console.proxy_admins = vec!["ops-lead".into()];
    c.console.proxy_trusted = vec!["127.0.0.1/32".into()];
    let console = testkit::console::start(&c).await;
    let as_user = |u: Option<&str>| {
        let mut cl = Client::new(&console);
        if let Some(u) = u {
            cl.headers.insert("x-auth-request-user", u.parse().unwrap());
        }
        cl
    };
    let anon = as_user(None);
    assert_eq!(
        anon.get("/api/subscriptions").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(anon
        .get("/subscriptions")
        .await
        .text
        .contains("X-Auth-Request-User".to_ascii_lowercase().as_str()));
    let mut lead = as_user(Some("ops-lead"));
    let me = lead.get("/api/me").await.json();
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str(), me["via"].as_str()),
        (Some("ops-lead"), Some("admin"), Some("proxy"))
    );
    lead.csrf = me["csrf_token"].as_str().map(str::to_string);
    assert_eq!(
        lead.call(
            "POST",
            "/api/subscriptions",
            Some(sub_body("s1", "https://p.example/h"))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let no_token = as_user(Some("ops-lead"));
    assert_eq!(
        no_token
            .call("POST", "/api/subscriptions/s1/disable", None)
            .await
            .status,
        StatusCode::FORBIDDEN,
        "CSRF applies to proxy users too"
    );
    let mut oncall = as_user(Some("on-call"));
    oncall.csrf = oncall.get("/api/me").await.json()["csrf_token"]
        .as_str()
        .map(str::to_string);
    assert_eq!(
        oncall
            .call("POST", "/api/subscriptions/s1/disable", None)
            .await
            .status,
        StatusCode::FORBIDDEN,
        "not in proxy_admins: viewer"
    );
    assert_eq!(
        oncall.get("/login").await.status,
        StatusCode::SEE_OTHER,
        "no login form behind a proxy"
    );
    drop(console);

    // The same header from an address that is not the proxy's counts for nothing.
    c.console.proxy_trusted = vec!["10.0.0.0/8".into()];
    let console = testkit::console::start(&c).await;
    let mut forged = Client::new(&console);
    forged
        .headers
        .insert("x-auth-request-user", "ops-lead".parse().unwrap());
    let r = forged.get("/api/subscriptions").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let trail = actions(&audit(&c).await);
    assert!(
        trail.contains(&(
            "ops-lead".into(),
            "subscription.create".into(),
            "s1".into(),
            "ok".into()
        )),
        "{trail:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_webhook_reaches_its_one_subscription_signed_and_shows_in_its_deliveries() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("console-test-webhook", Some(&receiver)).await;
    let console = testkit::console::start(&c).await;
    let a = admin(&console).await;
    for (id, path) in [("one", "/one"), ("other", "/other")] {
        let r = a
            .call(
                "POST",
                "/api/subscriptions",
                Some(sub_body(id, receiver.url(path).as_str())),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        receiver.set_secret(path, r.json()["secret"].as_str().unwrap());
    }
    let (cancel, handle) = processor(&c);
    let r = a.call("POST", "/api/subscriptions/one/test", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let dlv = r.json()["delivery_id"].as_str().unwrap().to_string();
    let got = receiver.wait_for("/one", 1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1, "the test webhook arrived");
    assert_eq!(
        got[0].signature_valid,
        Some(true),
        "signed with the subscription's secret"
    );
    assert_eq!(got[0].header("x-webhook-id"), Some(dlv.as_str()));
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["event_type"], "rewards.points_awarded");
    // Its deliveries, newest first, from the delivery log; the attempt in order.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let d = a
            .get("/api/subscriptions/one/deliveries?since=1h")
            .await
            .json();
        let rows = d["deliveries"].as_array().cloned().unwrap_or_default();
        if !rows.is_empty() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["delivery_id"], dlv.as_str());
    assert_eq!(rows[0]["outcome"], "success");
    assert_eq!(rows[0]["http_status"], 200);
    assert_eq!(rows[0]["source_topic"], "mgpass.test-webhook");
    let attempts = a.get(&format!("/api/deliveries/{dlv}")).await.json();
    assert_eq!(
        attempts["attempts"].as_array().unwrap().len(),
        1,
        "{attempts}"
    );
    let page = a.get("/subscriptions/one").await;
    assert!(
        page.text.contains(&dlv) && page.text.contains("success"),
        "the page lists it"
    );
    // The CLI's commands are the same functions: `deliveries list` shows it, `subscriptions
    // test` sends another.
    let listed = cli(
        &c,
        &[
            "deliveries",
            "list",
            "--subscription",
            "one",
            "--since",
            "1h",
        ],
    )
    .await;
    assert!(
        listed.contains(&dlv) && listed.contains("success"),
        "{listed}"
    );
    let sent = cli(&c, &["subscriptions", "test", "--id", "one"]).await;
    assert!(sent.starts_with("test webhook dlv_"), "{sent}");
    assert_eq!(
        receiver
            .wait_for("/one", 2, Duration::from_secs(60))
            .await
            .len(),
        2
    );
    assert_eq!(
        a.get("/api/deliveries/dlv_nope").await.status,
        StatusCode::NOT_FOUND
    );
    let r = a.get("/api/subscriptions/one/deliveries?since=soon").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["fields"]["since"].is_string());
    // A disabled or missing subscription is refused before anything is sent.
    a.call("POST", "/api/subscriptions/other/disable", None)
        .await;
    let r = a.call("POST", "/api/subscriptions/other/test", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("disabled"));
    assert_eq!(
        a.call("POST", "/api/subscriptions/ghost/test", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        receiver.received_on("/other").is_empty(),
        "no other subscription got anything"
    );
    assert_eq!(receiver.received_on("/one").len(), 2);
    cancel.cancel();
    handle.await.unwrap().unwrap();
    let trail = actions(&audit(&c).await);
    assert!(trail.contains(&(
        "admin".into(),
        "subscription.test_webhook".into(),
        "one".into(),
        "ok".into()
    )));
    assert!(trail.contains(&(
        "admin".into(),
        "subscription.test_webhook".into(),
        "other".into(),
        "refused".into()
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_previewed_then_replayed_with_confirmation_and_progress() {
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let c = setup("console-replay", Some(&receiver)).await;
    let console = testkit::console::start(&c).await;
    let a = admin(&console).await;
    let r = a
        .call(
            "POST",
            "/api/subscriptions",
            Some(sub_body("down", receiver.url("/down").as_str())),
        )
        .await;
    receiver.set_secret("/down", r.json()["secret"].as_str().unwrap());
    // Two failed records, as the engine writes them.
    let now = mgpass_webhooks::delivery::now_ms();
    let failed = |id: &str, sub: &str| {
        DeliveryTask {
        delivery_id: id.into(),
        subscription_id: sub.into(),
        event_type: "rewards.points_awarded".into(),
        idempotency_key: "k".into(),
        body: r#"{"event_type":"rewards.points_awarded","data":{"user_id":"u1"},"timestamp":"2025-01-15T10:30:00.000Z"}"#.into(),
        body_by_reference: false,
        attempt: 4,
        due_at_ms: now,
        first_attempt_at_ms: now - 31_000,
        source: SourceRef { topic: c.topics.events.clone(), partition: 0, offset: 0, timestamp_ms: None },
        last_error: Some("HTTP 500".into()),
        last_status: Some(500),
        last_outcome: Some("http_error".into()),
        client_id: Some(None),
        failed_at_ms: Some(now),
        replay: None::<ReplayMarker>,
    }
    };
    let tasks = [
        failed("dlv_console_1", "down"),
        failed("dlv_console_gone", "gone"),
    ];
    let records: Vec<(Option<String>, Option<Vec<u8>>)> = tasks
        .iter()
        .map(|t| {
            (
                Some(t.delivery_id.clone()),
                Some(serde_json::to_vec(t).unwrap()),
            )
        })
        .collect();
    testkit::produce_all(&testkit::producer(), &c.topics.failed, &records).await;

    let list = a.get("/api/failed?subscription=down").await.json();
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["failed"][0]["delivery_id"], "dlv_console_1");
    assert_eq!(list["failed"][0]["last_outcome"], "http_error");
    let page = a.get("/failed").await.text;
    assert!(page.contains("dlv_console_1") && page.contains("dlv_console_gone"));
    let r = a.get("/api/failed?reason=nope").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["fields"]["reason"].is_string());

    // The dry run: counts, nothing produced.
    let p = a.get("/api/replay/preview?all=true").await.json();
    assert_eq!(
        (p["selected"].as_u64(), p["would_replay"].as_u64()),
        (Some(2), Some(1)),
        "{p}"
    );
    assert_eq!(p["skipped"]["subscription_deleted"], 1);
    let page = a.get("/replay/preview?subscription=down").await.text;
    assert!(page.contains("id=\"count-replay\">1<"), "{page}");
    assert!(
        page.contains("name=\"confirm\""),
        "a confirmation is asked for"
    );
    assert!(
        testkit::read_topic(&c.topics.replay, 1, Duration::from_secs(2))
            .await
            .is_empty(),
        "a preview produces nothing"
    );
    let r = a.get("/api/replay/preview").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "no selector: {}", r.text);

    // Unconfirmed, or without a selector: refused.
    let r = a
        .call(
            "POST",
            "/api/replay",
            Some(json!({"subscription": ["down"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("confirm"));
    let r = a
        .call("POST", "/api/replay", Some(json!({"confirm": true})))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);

    let (cancel, handle) = processor(&c);
    let r = a
        .call(
            "POST",
            "/api/replay",
            Some(json!({"subscription": ["down"], "confirm": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let job = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let v = a.get(&format!("/api/replay/{job}")).await.json();
        if v["state"] != "running" || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view["state"], "done", "{view}");
    assert_eq!(
        (view["planned"].as_u64(), view["produced"].as_u64()),
        (Some(1), Some(1)),
        "{view}"
    );
    let run_id = view["run_id"].as_str().unwrap().to_string();
    let page = a.get(&format!("/replay/{job}")).await.text;
    assert!(
        page.contains("id=\"job-progress\"") && page.contains(&run_id),
        "{page}"
    );
    let got = receiver.wait_for("/down", 1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("x-webhook-id"),
        Some("dlv_console_1"),
        "the same delivery id"
    );
    assert_eq!(got[0].signature_valid, Some(true));
    // Listed as replayed; a second replay re-injects nothing.
    let list = a.get("/api/failed?subscription=down").await.json();
    assert_eq!(list["failed"][0]["replayed_by"], run_id.as_str(), "{list}");
    let p = a.get("/api/replay/preview?subscription=down").await.json();
    assert_eq!(p["would_replay"], 0, "{p}");
    assert_eq!(
        a.get("/api/replay/job_nope").await.status,
        StatusCode::NOT_FOUND
    );
    cancel.cancel();
    handle.await.unwrap().unwrap();
    let trail = actions(&audit(&c).await);
    assert!(
        trail
            .iter()
            .any(|t| t.1 == "replay.start" && t.3 == "ok" && t.0 == "admin"),
        "{trail:?}"
    );
    assert!(
        trail.contains(&(
            "admin".into(),
            "replay.finish".into(),
            run_id.clone(),
            "ok".into()
        )),
        "{trail:?}"
    );
    assert!(
        trail
            .iter()
            .filter(|t| t.1 == "replay.start" && t.3 == "refused")
            .count()
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_forms_change_subscriptions_as_the_api_does() {
    let c = setup("console-forms", None).await;
    let console = testkit::console::start(&c).await;
    let a = admin(&console).await;
    let csrf = a.csrf.clone().unwrap();
    let t = csrf.as_str();
    let r = a
        .form(
            "/subscriptions",
            &[
                ("_csrf", t),
                ("id", "web-1"),
                ("url", "https://w.partner.example/h"),
                ("event_types", "rewards.redeemed"),
                ("event_types", "cashback.processed"),
                ("client_id", ""),
                ("secret", "a-secret-typed-in-the-form-0123"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(
        !r.text.contains("shown this once"),
        "a given secret is not shown back"
    );
    assert!(!r.text.contains("a-secret-typed-in-the-form-0123"));
    let s = a.get("/api/subscriptions/web-1").await.json();
    assert_eq!(
        s["event_types"],
        json!(["cashback.processed", "rewards.redeemed"]),
        "repeated checkboxes"
    );
    assert_eq!(
        (s["enabled"].as_bool(), s["client_id"].is_null()),
        (Some(false), true),
        "unticked, empty"
    );
    let fp = s["secret_fingerprint"].as_str().unwrap().to_string();

    let see = |r: &testkit::console::Answer, to: &str| {
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
        assert_eq!(r.header("location"), Some(to));
    };
    see(
        &a.form("/subscriptions/web-1/enable", &[("_csrf", t)]).await,
        "/subscriptions/web-1?done=enabled",
    );
    assert_eq!(
        a.get("/api/subscriptions/web-1").await.json()["enabled"],
        true
    );
    see(
        &a.form("/subscriptions/web-1/disable", &[("_csrf", t)])
            .await,
        "/subscriptions/web-1?done=disabled",
    );
    assert_eq!(
        a.get("/api/subscriptions/web-1").await.json()["enabled"],
        false
    );
    let r = a
        .form(
            "/subscriptions/web-1",
            &[
                ("_csrf", t),
                ("url", "https://w2.partner.example/h"),
                ("event_types", "*"),
                ("client_id", "app-9"),
                ("enabled", "on"),
            ],
        )
        .await;
    see(&r, "/subscriptions/web-1?done=saved");
    let s = a.get("/api/subscriptions/web-1").await.json();
    assert_eq!(
        (
            s["url"].as_str(),
            s["client_id"].as_str(),
            s["enabled"].as_bool(),
            s["secret_fingerprint"].as_str()
        ),
        (
            Some("https://w2.partner.example/h"),
            Some("app-9"),
            Some(true),
            Some(fp.as_str())
        )
    );
    let r = a
        .form(
            "/subscriptions/web-1",
            &[("_csrf", t), ("url", "https://w2.partner.example/h")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "no event type");
    assert!(r.text.contains("id=\"error-event_types\""), "{}", r.text);
    let r = a
        .form("/subscriptions/web-1/rotate-secret", &[("_csrf", t)])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let secret = r
        .text
        .split("<code id=\"secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap();
    assert!(
        secret.starts_with("whsec_"),
        "the new secret, once: {}",
        r.text
    );
    let detail = a.get("/subscriptions/web-1").await.text;
    assert!(!detail.contains(secret), "never again");
    assert_ne!(
        a.get("/api/subscriptions/web-1").await.json()["secret_fingerprint"],
        fp.as_str()
    );
    see(
        &a.form("/subscriptions/web-1/delete", &[("_csrf", t)]).await,
        "/subscriptions",
    );
    assert_eq!(
        a.get("/api/subscriptions/web-1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get("/subscriptions/web-1").await.status,
        StatusCode::NOT_FOUND
    );
    let r = a
        .form("/subscriptions/web-1/disable", &[("_csrf", t)])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let trail = actions(&audit(&c).await);
    for action in [
        "subscription.create",
        "subscription.enable",
        "subscription.disable",
        "subscription.update",
        "subscription.rotate_secret",
        "subscription.delete",
    ] {
        assert!(
            trail.contains(&("admin".into(), action.into(), "web-1".into(), "ok".into())),
            "{action}: {trail:?}"
        );
    }
}
