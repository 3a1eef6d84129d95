//! The admin console in-process for tests: [`start`] serves it on an ephemeral port with a
//! test's config, [`Client`] logs in (or not) and calls its pages and API as a browser or
//! script would, keeping the session cookie and the CSRF token by hand so a test can also leave
//! them out, alter them or use another session's.

use std::net::SocketAddr;
use std::time::Duration;

use mgpass_webhooks::config::{Config, ConsoleAccount};
use reqwest::header::{HeaderMap, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

/// A console serving until dropped.
pub struct Running {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.handle.abort();
    }
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// An account entry for `console.accounts` with a real argon2 hash of `password`.
pub fn account(username: &str, password: &str, role: &str) -> ConsoleAccount {
    ConsoleAccount {
        username: username.into(),
        password_hash: mgpass_webhooks::console::auth::hash_password(password)
            .expect("hash the test password"),
        role: role.into(),
    }
}

/// Serves the console with `c` (its `console.listen` replaced by an ephemeral port).
pub async fn start(c: &Config) -> Running {
    let mut c = c.clone();
    c.console.listen = "127.0.0.1:0".into();
    let cancel = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(mgpass_webhooks::console::serve(c, cancel.clone(), Some(tx)));
    let addr = match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(a)) => a,
        _ => {
            let e = handle.await;
            panic!("the console did not start: {e:?}");
        }
    };
    Running {
        addr,
        cancel,
        handle,
    }
}

/// An answer: status, headers, body text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A user agent of the console: no redirects followed, the session cookie kept by hand.
pub struct Client {
    base: String,
    http: reqwest::Client,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
    /// Extra headers sent with every request (the proxy's user header).
    pub headers: HeaderMap,
}

impl Client {
    pub fn new(console: &Running) -> Client {
        Client {
            base: format!("http://{}", console.addr),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()
                .expect("HTTP client"),
            cookie: None,
            csrf: None,
            headers: HeaderMap::new(),
        }
    }

    async fn send(&self, mut req: reqwest::RequestBuilder) -> Answer {
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c.as_str());
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("console request");
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.unwrap_or_default(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// A JSON call with the client's CSRF token (when it has one).
    pub async fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Answer {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(t) = &self.csrf {
            req = req.header("x-csrf-token", t.as_str());
        }
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        self.send(req).await
    }

    /// A form post (`pairs` as given, no token added).
    pub async fn form(&self, path: &str, pairs: &[(&str, &str)]) -> Answer {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        self.send(req).await
    }

    /// Logs in through the login form; keeps the session cookie and the CSRF token. Returns
    /// the login answer.
    pub async fn login(&mut self, user: &str, password: &str) -> Answer {
        let form = self.get("/login").await;
        let token = form
            .text
            .split("name=\"_login\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the login form has a token")
            .to_string();
        let answer = self
            .form(
                "/login",
                &[
                    ("_login", &token),
                    ("username", user),
                    ("password", password),
                ],
            )
            .await;
        if let Some(set) = answer.header(SET_COOKIE.as_str()) {
            self.cookie = set.split(';').next().map(str::to_string);
            let me = self.get("/api/me").await;
            assert_eq!(me.status, StatusCode::OK, "{}", me.text);
            self.csrf = me.json()["csrf_token"].as_str().map(str::to_string);
        }
        answer
    }
}
