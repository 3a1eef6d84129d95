//! An in-process webhook receiver for integration tests: HTTPS (HTTP/1.1 and HTTP/2) with a
//! certificate for `127.0.0.1` and `localhost` issued by a throw-away CA, or plain HTTP, bound to
//! `127.0.0.1:0`.
//!
//! - What it answers is programmable per path, at any time ([`Behaviour`], [`Receiver::set_behaviour`]).
//! - Every request is recorded on arrival, before it is answered (hung ones included), in arrival
//!   order ([`Receiver::recv_timeout`], [`Receiver::wait_for`], [`Receiver::received`]).
//! - With a secret for its path ([`Receiver::set_secret`]), a request's `X-Webhook-Signature` is
//!   checked as the public guide's Node code does (HMAC-SHA256 hex of the body, timing-safe
//!   comparison) and the verdict recorded. It is computed over the raw body: our bodies are fixed
//!   points of `JSON.stringify(JSON.parse(body))`, which `tests/body_js_fixed_point.rs` proves
//!   with Node itself.
//! - Dropping the [`Receiver`] stops the server and every connection, hung requests included.
//!
//! The certificates and the HTTPS server loop are [`crate::https`], shared with the benchmark's
//! receiver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::https::{self, response, streamed_response, Handler, Leaf, LocalTls, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mgpass_webhooks::signing;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a [`Behaviour::Hang`] request waits when nothing cancels it first.
const HANG_FOR: Duration = Duration::from_secs(3600);

/// What the receiver answers on a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// This status, always, with a short text body.
    Status(u16),
    /// These statuses, one per request, then 200 once the sequence is exhausted.
    Sequence(Vec<u16>),
    /// Never answers (until the client gives up or the receiver is dropped).
    Hang,
    /// `302 Found` to `/redirected/<path>` on this receiver.
    Redirect,
    /// This status with this body.
    Body(u16, Vec<u8>),
    /// This status after this delay (a slow endpoint).
    Delay(Duration, u16),
    /// This status and its headers at once, then a body of one byte per interval, without end
    /// (until the client gives up or the receiver is dropped).
    Drip(u16, Duration),
    /// This status with a body of this many bytes, generated as the client reads it (never
    /// held in memory: a huge response).
    Stream(u16, u64),
    /// This status with `Retry-After: <value>` (seconds or an HTTP date, sent as given).
    RetryAfter(u16, String),
    /// Every `n`th request on the path (the `n`th, `2n`th, …) answers this status, the others
    /// 200: an endpoint that fails now and then.
    FailEvery(u64, u16),
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour::Status(200)
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Header names in lowercase; repeated headers joined with `, `.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The HTTP version the request came over (`HTTP/1.1`, `HTTP/2.0`).
    pub version: String,
    /// `None` when no secret is set for the path; otherwise whether the signature verified.
    pub signature_valid: Option<bool>,
    /// The status the receiver answers (or answered) this request with; `None` for a
    /// [`Behaviour::Hang`].
    pub status: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Default)]
struct State {
    default: Behaviour,
    behaviours: HashMap<String, Behaviour>,
    secrets: HashMap<String, Vec<u8>>,
    /// Requests per path, for [`Behaviour::FailEvery`].
    counts: HashMap<String, u64>,
    log: Vec<Received>,
}

struct Shared {
    state: Mutex<State>,
    /// Number of requests recorded so far; waiters watch it.
    count: watch::Sender<usize>,
    cancel: CancellationToken,
    base: url::Url,
}

/// The running receiver. Dropping it stops it.
pub struct Receiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Position of [`Receiver::recv_timeout`] in the log.
    cursor: Mutex<usize>,
    ca_pem: Option<String>,
    ca_dir: Option<tempfile::TempDir>,
    server: tokio::task::JoinHandle<()>,
}

/// Concurrent HTTP/2 streams a receiver allows per connection unless told otherwise.
const MAX_STREAMS: u32 = 1024;

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

impl Receiver {
    /// An HTTPS receiver answering `default` on every path without its own behaviour.
    pub async fn start(default: Behaviour) -> Receiver {
        Receiver::start_with_leaf(default, Leaf::Valid).await
    }

    /// An HTTPS receiver whose server certificate is of the given kind (expired, for another
    /// name), issued by its own CA ([`Receiver::ca_file`]) like [`Receiver::start`]'s.
    pub async fn start_with_leaf(default: Behaviour, leaf: Leaf) -> Receiver {
        Receiver::start_tls(default, leaf, &[b"h2", b"http/1.1"], MAX_STREAMS).await
    }

    /// An HTTPS receiver allowing at most `max_streams` concurrent HTTP/2 streams per connection.
    pub async fn start_with_max_streams(default: Behaviour, max_streams: u32) -> Receiver {
        Receiver::start_tls(default, Leaf::Valid, &[b"h2", b"http/1.1"], max_streams).await
    }

    /// An HTTPS receiver whose TLS offers only `http/1.1` by ALPN, as servers without HTTP/2 do.
    pub async fn start_http1_only(default: Behaviour) -> Receiver {
        Receiver::start_tls(default, Leaf::Valid, &[b"http/1.1"], MAX_STREAMS).await
    }

    async fn start_tls(
        default: Behaviour,
        leaf: Leaf,
        alpn: &[&[u8]],
        max_streams: u32,
    ) -> Receiver {
        // A distinct CA name per receiver: with one name for all, a client trusting another
        // receiver's CA finds an issuer of that name and reports a bad signature, not an
        // unknown issuer.
        static CAS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ca_name = format!("mgpass-webhooks test CA {} #{n}", std::process::id());
        let tls = LocalTls::generate_leaf(&ca_name, leaf).expect("test certificates");
        let acceptor = tls.acceptor(alpn).expect("TLS acceptor");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), &tls.ca_pem).expect("write CA file");

        let mut r = Receiver::launch("https", default, Some(acceptor), max_streams).await;
        r.ca_pem = Some(tls.ca_pem);
        r.ca_dir = Some(dir);
        r
    }

    /// A plain `http://` receiver (for `http.allow_http` tests).
    pub async fn start_plain(default: Behaviour) -> Receiver {
        Receiver::launch("http", default, None, MAX_STREAMS).await
    }

    async fn launch(
        scheme: &str,
        default: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
        max_streams: u32,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let base = url::Url::parse(&format!("{scheme}://127.0.0.1:{}/", addr.port())).unwrap();
        let (count, _) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                default,
                ..State::default()
            }),
            count,
            cancel: CancellationToken::new(),
            base,
        });
        let handler: Handler = {
            let shared = shared.clone();
            Arc::new(move |req| Box::pin(handle(shared.clone(), req)))
        };
        let server = tokio::spawn(https::serve(listener, tls, max_streams, handler));
        Receiver {
            shared,
            addr,
            cursor: Mutex::new(0),
            ca_pem: None,
            ca_dir: None,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT/path` (or `http://` for a plain receiver); `path` with or
    /// without its leading `/`, may carry a query.
    pub fn url(&self, path: &str) -> url::Url {
        self.shared
            .base
            .join(path.trim_start_matches('/'))
            .expect("receiver URL")
    }

    /// The PEM of the CA that issued the server certificate. Panics for a plain receiver.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone().expect("a plain receiver has no CA")
    }

    /// A file holding [`Receiver::ca_pem`], for `http.ca_bundle`; lives as long as the receiver.
    pub fn ca_file(&self) -> PathBuf {
        self.ca_dir
            .as_ref()
            .expect("a plain receiver has no CA")
            .path()
            .join("ca.pem")
    }

    /// An `http.*` config that reaches this receiver: its CA trusted (HTTPS) or `http://`
    /// allowed (plain), loopback allow-listed for the address guard, other settings at their
    /// defaults.
    pub fn http_config(&self) -> mgpass_webhooks::config::HttpConfig {
        let mut c = mgpass_webhooks::config::HttpConfig {
            allow_private: vec!["127.0.0.0/8".into()],
            ..Default::default()
        };
        if self.ca_dir.is_some() {
            c.ca_bundle = Some(self.ca_file());
        } else {
            c.allow_http = true;
        }
        c
    }

    /// Sets what `path` answers from now on (replacing any sequence in progress).
    pub fn set_behaviour(&self, path: &str, behaviour: Behaviour) {
        let mut s = self.shared.state.lock().unwrap();
        s.behaviours.insert(normalise(path), behaviour);
    }

    /// Sets what paths without their own behaviour answer.
    pub fn set_default(&self, behaviour: Behaviour) {
        self.shared.state.lock().unwrap().default = behaviour;
    }

    /// Verifies `X-Webhook-Signature` of requests to `path` with `secret` from now on.
    pub fn set_secret(&self, path: &str, secret: &str) {
        let mut s = self.shared.state.lock().unwrap();
        s.secrets
            .insert(normalise(path), secret.as_bytes().to_vec());
    }

    /// The next request in arrival order not yet returned by this method, waiting up to `timeout`.
    pub async fn recv_timeout(&self, timeout: Duration) -> Option<Received> {
        let next = *self.cursor.lock().unwrap();
        let mut rx = self.shared.count.subscribe();
        let arrived = tokio::time::timeout(timeout, rx.wait_for(|n| *n > next)).await;
        if !matches!(arrived, Ok(Ok(_))) {
            return None;
        }
        let mut cursor = self.cursor.lock().unwrap();
        let r = self.shared.state.lock().unwrap().log.get(*cursor).cloned();
        if r.is_some() {
            *cursor += 1;
        }
        r
    }

    /// Every request so far, in arrival order (does not move [`Receiver::recv_timeout`]).
    pub fn received(&self) -> Vec<Received> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// How many requests to `path` so far were answered `status` and carried a valid
    /// signature, without copying the log (for long runs).
    pub fn count_answered(&self, path: &str, status: u16) -> usize {
        let path = normalise(path);
        let s = self.shared.state.lock().unwrap();
        s.log
            .iter()
            .filter(|r| {
                r.path == path && r.status == Some(status) && r.signature_valid == Some(true)
            })
            .count()
    }

    /// Every request to `path` so far, in arrival order.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        let path = normalise(path);
        let s = self.shared.state.lock().unwrap();
        s.log.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits until `path` has received at least `count` requests or `timeout` passed, and returns
    /// what it received (assert on the length).
    pub async fn wait_for(&self, path: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.count.subscribe();
        loop {
            rx.borrow_and_update();
            let got = self.received_on(path);
            if got.len() >= count {
                return got;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.received_on(path),
            }
        }
    }
}

fn normalise(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

async fn handle(shared: Arc<Shared>, req: hyper::Request<Incoming>) -> Response {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => return response(400, &b"unreadable body"[..]),
    };
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let path = parts.uri.path().to_string();

    let behaviour = {
        let mut s = shared.state.lock().unwrap();
        let signature_valid = s.secrets.get(&path).map(|secret| {
            signing::verify(
                secret,
                &body,
                headers
                    .get("x-webhook-signature")
                    .map_or(&b""[..], |v| v.as_bytes()),
            )
        });
        let seen = {
            let n = s.counts.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let default = s.default.clone();
        let behaviour = match s.behaviours.get_mut(&path) {
            Some(Behaviour::Sequence(seq)) => {
                Behaviour::Status(if seq.is_empty() { 200 } else { seq.remove(0) })
            }
            Some(b) => b.clone(),
            None => match default {
                // A default sequence is per path: start this path's own copy.
                Behaviour::Sequence(mut seq) => {
                    let status = if seq.is_empty() { 200 } else { seq.remove(0) };
                    s.behaviours.insert(path.clone(), Behaviour::Sequence(seq));
                    Behaviour::Status(status)
                }
                other => other,
            },
        };
        let behaviour = match behaviour {
            Behaviour::FailEvery(n, code) if n > 0 && seen % n == 0 => Behaviour::Status(code),
            Behaviour::FailEvery(..) => Behaviour::Status(200),
            other => other,
        };
        let status = match &behaviour {
            Behaviour::Status(code)
            | Behaviour::Body(code, _)
            | Behaviour::Delay(_, code)
            | Behaviour::Drip(code, _)
            | Behaviour::Stream(code, _)
            | Behaviour::RetryAfter(code, _) => Some(*code),
            Behaviour::Redirect => Some(302),
            Behaviour::Hang | Behaviour::Sequence(_) | Behaviour::FailEvery(..) => None,
        };
        s.log.push(Received {
            method: parts.method.to_string(),
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
            version: format!("{:?}", parts.version),
            signature_valid,
            status,
        });
        let n = s.log.len();
        shared.count.send_replace(n);
        behaviour
    };

    match behaviour {
        Behaviour::Status(code) => status_response(code),
        Behaviour::Sequence(_) | Behaviour::FailEvery(..) => unreachable!("resolved above"),
        Behaviour::Body(code, bytes) => response(code, bytes),
        Behaviour::Delay(wait, code) => {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shared.cancel.cancelled() => {}
            }
            status_response(code)
        }
        Behaviour::Drip(code, every) => streamed_response(code, Generated::new(u64::MAX, 1, every)),
        Behaviour::Stream(code, bytes) => {
            streamed_response(code, Generated::new(bytes, CHUNK.len(), Duration::ZERO))
        }
        Behaviour::RetryAfter(code, value) => {
            let mut r = status_response(code);
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                value.parse().expect("Retry-After header value"),
            );
            r
        }
        Behaviour::Hang => {
            tokio::select! {
                _ = tokio::time::sleep(HANG_FOR) => {}
                _ = shared.cancel.cancelled() => {}
            }
            status_response(503)
        }
        Behaviour::Redirect => {
            let target = shared
                .base
                .join(&format!("redirected{path}"))
                .expect("redirect URL");
            let mut r = response(302, &b"Found"[..]);
            r.headers_mut().insert(
                hyper::header::LOCATION,
                target.as_str().parse().expect("location header"),
            );
            r
        }
    }
}

fn status_response(code: u16) -> Response {
    let reason = hyper::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status");
    response(code, reason.as_bytes())
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A response body of `remaining` bytes of `x`, in frames of `chunk` bytes, the first at once and
/// each further one `every` later (zero: as fast as the client reads).
struct Generated {
    remaining: u64,
    chunk: usize,
    every: Duration,
    first: bool,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Generated {
    fn new(remaining: u64, chunk: usize, every: Duration) -> Generated {
        Generated {
            remaining,
            chunk: chunk.clamp(1, CHUNK.len()),
            every,
            first: true,
            sleep: None,
        }
    }
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if !this.first && !this.every.is_zero() {
            let every = this.every;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        this.first = false;
        let n = (this.chunk as u64).min(this.remaining) as usize;
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &CHUNK[..n],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.remaining == u64::MAX {
            hyper::body::SizeHint::default()
        } else {
            hyper::body::SizeHint::with_exact(self.remaining)
        }
    }
}
