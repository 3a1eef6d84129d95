//! The admin console in headless Chromium: this test starts the processor, the console and an
//! HTTPS receiver on the real broker, runs `node tests/browser/console.spec.mjs` (playwright-core
//! driving Debian's `/usr/bin/chromium`), and then checks what the receiver got against what
//! the browser saw: the test webhook signed with the secret the page showed once, the failing
//! delivery attempted four times and, after the replay confirmed in the page, a fifth time with
//! the same delivery id. Screenshots of every step are left in `target/tmp/console-browser/`.
//!
//! Needs `node`, `/usr/bin/chromium` (Debian's `chromium` package) and `tests/browser/node_modules`
//! (`npm ci --prefix tests/browser`); `scripts/test.sh` installs them. Missing, the test fails
//! saying so: it never skips.

use mgpass_testkit as testkit;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mgpass_webhooks::metrics::Metrics;
use testkit::console::account;
use testkit::receiver::{Behaviour, Receiver};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "browser test password 42";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails loudly, naming the install command, when a browser-test prerequisite is missing.
fn require_tools() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: the console's browser test needs Debian's chromium \
         (`apt-get install -y chromium`; `bash scripts/test.sh` installs it)"
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: the console's browser test runs tests/browser/console.spec.mjs with it"
    );
    assert!(
        repo().join("tests/browser/node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules/playwright-core is missing: run `npm ci --prefix tests/browser` \
         (`bash scripts/test.sh` does)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_logs_in_creates_a_subscription_sees_a_failure_and_replays_it_in_chromium() {
    require_tools();
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    // Four failures, then 200: the fifth request (the replay's first attempt) succeeds.
    receiver.set_behaviour("/flaky", Behaviour::Sequence(vec![500, 500, 500, 500]));
    let mut c = testkit::config("console-browser");
    c.http = receiver.http_config();
    c.http.request_timeout_ms = 2_000;
    c.http.connect_timeout_ms = 1_000;
    c.delivery.shutdown_deadline_secs = 3;
    c.console.auth = "accounts".into();
    c.console.cookie_secure = false; // plain http:// on loopback
    c.console.accounts = vec![account("ops-admin", PASSWORD, "admin")];
    testkit::setup_topics(&c).await;
    let cancel = CancellationToken::new();
    let processor = tokio::spawn(mgpass_webhooks::app::run_processor(
        c.clone(),
        Arc::new(Metrics::new()),
        cancel.clone(),
    ));
    let console = testkit::console::start(&c).await;

    let artefacts = repo().join("target/tmp/console-browser");
    let _ = std::fs::remove_dir_all(&artefacts);
    std::fs::create_dir_all(&artefacts).unwrap();
    let result_file = artefacts.join("result.json");
    let config_file = artefacts.join("config.json");
    std::fs::write(
        &config_file,
        serde_json::json!({
            "base": console.url(""),
            "username": "ops-admin",
            "password": PASSWORD,
            "ok_url": receiver.url("/ok").as_str(),
            "flaky_url": receiver.url("/flaky").as_str(),
            "artefacts": artefacts,
            "result": result_file,
        })
        .to_string(),
    )
    .unwrap();
    let spec = repo().join("tests/browser/console.spec.mjs");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(&spec)
        .env("CONSOLE_TEST_CONFIG", &config_file)
        .current_dir(repo().join("tests/browser"))
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the browser test finished within 5 minutes")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {}):\n{stderr}",
        artefacts.display()
    );

    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result_file).unwrap()).unwrap();
    let secret = result["secret"].as_str().unwrap();
    let ok = receiver.received_on("/ok");
    assert_eq!(ok.len(), 1, "one test webhook to the first URL");
    assert_eq!(ok[0].header("x-webhook-id"), result["ok_delivery"].as_str());
    let verify = |r: &testkit::receiver::Received| {
        mgpass_webhooks::signing::verify(
            secret.as_bytes(),
            &r.body,
            r.header("x-webhook-signature").unwrap_or("").as_bytes(),
        )
    };
    assert!(
        verify(&ok[0]),
        "signed with the secret the page showed once"
    );
    let flaky = receiver.received_on("/flaky");
    let statuses: Vec<Option<u16>> = flaky.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(500), Some(500), Some(500), Some(500), Some(200)],
        "four failed attempts, then the replay's success"
    );
    for r in &flaky {
        assert_eq!(r.header("x-webhook-id"), result["failed_delivery"].as_str());
        assert!(verify(r), "every attempt signed");
    }
    assert_eq!(
        flaky[4].header("x-webhook-attempt"),
        Some("1"),
        "a fresh budget"
    );
    for shot in [
        "03-created-secret-once",
        "05-failed",
        "07-replay-done",
        "09-subscription",
    ] {
        let png = artefacts.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&png).is_ok_and(|m| m.len() > 10_000),
            "{} was saved",
            png.display()
        );
    }
    drop(console);
    cancel.cancel();
    processor.await.unwrap().unwrap();
}
