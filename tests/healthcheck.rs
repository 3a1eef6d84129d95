//! The `healthcheck` subcommand, run as the built binary (as a container's HEALTHCHECK runs it)
//! against a real admin server started in this process, and against a port where nothing listens.
//! No Kafka needed: the admin server is served on its own, with a subscription table never loaded.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use mgpass_webhooks::admin_server::{self, Health};
use mgpass_webhooks::metrics::Metrics;
use mgpass_webhooks::subscriptions::SubscriptionTable;
use tokio_util::sync::CancellationToken;

/// Starts the admin server on an ephemeral 127.0.0.1 port; cancelling the token stops it.
async fn admin_server(cancel: &CancellationToken) -> SocketAddr {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let health = Arc::new(Health::new(
        Arc::new(SubscriptionTable::new()),
        CancellationToken::new(),
    ));
    tokio::spawn(admin_server::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Metrics::new()),
        health,
        cancel.clone(),
        Some(tx),
    ));
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("admin server bound within 10 s")
        .expect("admin server reported its address")
}

/// Runs the binary with `args` and extra environment, bounded to 15 s.
async fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mgpass-webhooks"));
    cmd.args(args)
        .env_remove("MGPASS_CONFIG")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = tokio::task::spawn_blocking(move || cmd.output().expect("binary runs"));
    tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .expect("healthcheck ended within 15 s")
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_passes_against_a_serving_admin_server() {
    let cancel = CancellationToken::new();
    let addr = admin_server(&cancel).await;

    // Explicit URL.
    let url = format!("http://{addr}/livez");
    let out = healthcheck(&["healthcheck", "--url", &url], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&url),
        "{}",
        text(&out)
    );

    // Derived from admin.listen, through the environment layer, with the wildcard address
    // mapped to loopback (what the image's HEALTHCHECK relies on).
    let listen = format!("0.0.0.0:{}", addr.port());
    let out = healthcheck(&["healthcheck"], &[("MGPASS_ADMIN__LISTEN", &listen)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let loopback = format!("http://127.0.0.1:{}/livez", addr.port());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&loopback),
        "{}",
        text(&out)
    );

    // Derived from --set.
    let set = format!("admin.listen={addr}");
    let out = healthcheck(&["--set", &set, "healthcheck"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A non-200 answer fails: /readyz is 503 while the table has not loaded.
    let readyz = format!("http://{addr}/readyz");
    let out = healthcheck(&["healthcheck", "--url", &readyz], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("503") && stderr.contains(&readyz),
        "{}",
        text(&out)
    );

    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_fails_when_nothing_listens() {
    // A port that was free a moment ago and is closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/livez");
    let started = std::time::Instant::now();
    let out = healthcheck(&["healthcheck", "--url", &url, "--timeout-ms", "2000"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&url),
        "{}",
        text(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    let listen = format!("127.0.0.1:{port}");
    let out = healthcheck(&["healthcheck"], &[("MGPASS_ADMIN__LISTEN", &listen)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // A server that accepts the connection and never answers: the timeout ends the probe.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/livez", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = healthcheck(&["healthcheck", "--url", &url, "--timeout-ms", "500"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no answer within 500 ms"),
        "{}",
        text(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(silent);

    // Bad URLs are named.
    let out = healthcheck(&["healthcheck", "--url", "ftp://127.0.0.1/livez"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--url"),
        "{}",
        text(&out)
    );
}
