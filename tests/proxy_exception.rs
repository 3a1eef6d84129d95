//! The one exception to the address guard: a proxy named by the environment. Its own host
//! (here a name resolving to loopback, not allow-listed) is not checked; a target whose name our
//! lookup cannot resolve is left to the proxy; a target that is, or resolves only to, a refused
//! address never reaches the proxy. The proxy is an in-process one on 127.0.0.1 that answers
//! every request itself. This file holds one test because it sets the process environment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mgpass_webhooks::config::HttpConfig;
use mgpass_webhooks::delivery::http::{HttpClient, Outcome, Request, Transport};
use mgpass_webhooks::net_guard::{self, Lookup, Policy, Resolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A forward proxy for plain-HTTP targets that records each request line and answers 204.
async fn start_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    log.lock()
                        .unwrap()
                        .push(head.lines().next().unwrap_or_default().to_string());
                    let reply = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn a_proxy_from_the_environment_is_the_one_exception() {
    let (port, seen) = start_proxy().await;
    let proxy = format!("http://proxy.corp.example:{port}");
    for name in mgpass_webhooks::delivery::http::PROXY_VARIABLES {
        std::env::remove_var(name);
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    std::env::set_var("HTTP_PROXY", &proxy);
    assert_eq!(Transport::from_env(), Transport::Proxied);

    let config = HttpConfig {
        allow_http: true,
        resolve: vec!["internal.partner.example=10.0.0.5".into()],
        ..HttpConfig::default()
    };
    // The proxy's name resolves to loopback, which nothing allow-lists: exempt as the proxy.
    let resolver = Resolver::new(
        Policy::from_config(&config).unwrap(),
        Lookup::fixed([("proxy.corp.example", vec!["127.0.0.1".parse().unwrap()])]),
    )
    .with_exempt_hosts(net_guard::proxy_hosts([proxy.clone()]));
    let client = HttpClient::with_resolver(&config, Transport::Proxied, resolver).unwrap();
    let send = |url: &'static str| {
        let client = client.clone();
        async move {
            let url = url::Url::parse(url).unwrap();
            client
                .send(Request {
                    url: &url,
                    body: Bytes::from_static(b"{}"),
                    signature: "sig",
                    delivery_id: "dlv_proxy",
                    attempt: 1,
                })
                .await
        }
    };

    // Our lookup cannot resolve the target: the proxy may (split DNS), so it gets the request.
    let r = send("http://unknown.partner.example/hook").await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    // A target resolving (here: pinned) to a private address, and a loopback literal, are
    // refused before the proxy sees them.
    let r = send("http://internal.partner.example/hook").await;
    assert_eq!(r.outcome, Outcome::AddressRefused, "{r:?}");
    assert!(r.error.unwrap().contains("10.0.0.5 is private"));
    let r = send("http://127.0.0.1:9/hook").await;
    assert_eq!(r.outcome, Outcome::AddressRefused, "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["POST http://unknown.partner.example/hook HTTP/1.1"]);
    std::env::remove_var("HTTP_PROXY");
}
