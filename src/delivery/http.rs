//! One HTTP attempt of a webhook delivery.
//!
//! This module owns the HTTP client every delivery goes through and the classification of what
//! happened to one attempt. It guarantees, for every call of [`HttpClient::send`]:
//!
//! - exactly one `POST` of the given body bytes, unchanged, with `Content-Type: application/json`,
//!   [`SIGNATURE_HEADER`], [`DELIVERY_ID_HEADER`], [`ATTEMPT_HEADER`] and [`USER_AGENT`] — or no
//!   request at all when the URL is refused up front (`http://` without `http.allow_http`), or
//!   its host is, or resolves only to, an address the guard refuses ([`Outcome::AddressRefused`],
//!   see [`crate::net_guard`]: names are resolved by the guard's resolver inside the connector,
//!   so the address dialled is the address checked; IP literals are checked here);
//! - redirects are never followed: a 3xx is the [`Outcome::Redirect`] failure;
//! - the attempt ends within `http.request_timeout_ms` (connect, TLS, request and response body:
//!   a response that drips its body ends as [`Outcome::Timeout`], whatever its status);
//! - at most `http.max_response_bytes` of the response body are read (the rest is never buffered)
//!   and kept as a lossy UTF-8 excerpt;
//! - it never fails: every transport problem is an [`AttemptResult`] with a bounded [`Outcome`]
//!   (a metric label) and a short error text that carries neither the URL (partners put tokens in
//!   query strings) nor our body.
//!
//! Success is any 2xx ([`classify_status`]). Retry decisions belong to the caller.
//!
//! Two transports give those guarantees ([`Transport`]): a direct one, straight to the
//! endpoint, and reqwest, which honours the proxy variables of the environment. The first is
//! used unless the environment names a proxy: reqwest's layers (its redirect policy re-parses
//! every request's URL even with redirects off, plus request conversion and boxing) cost about
//! 20 % of the processor's CPU per delivery (docs/benchmarks.md). The direct transport sends
//! over HTTP/2 with the `h2` crate itself (one connection per origin, see `h2_pool`), and over
//! hyper's pooled HTTP/1.1 client to origins that do not choose HTTP/2 by ALPN and to `http://`
//! endpoints. All share the TLS set-up (webpki roots plus `http.ca_bundle`, ring), the pool
//! settings, the headers and the outcome rules, and `tests/http_attempts.rs` runs every case
//! against each.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER,
    USER_AGENT as USER_AGENT_NAME,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::h2_pool;
use crate::config::HttpConfig;
use crate::net_guard::{self, Resolver};

/// `X-Webhook-Signature`: lowercase hex HMAC-SHA256 of the body (see [`crate::signing`]).
pub const SIGNATURE_HEADER: &str = crate::signing::SIGNATURE_HEADER;
/// `X-Webhook-Id`: the delivery id, the same across retries and replays.
pub const DELIVERY_ID_HEADER: &str = "X-Webhook-Id";
/// `X-Webhook-Attempt`: the attempt number, starting at 1.
pub const ATTEMPT_HEADER: &str = "X-Webhook-Attempt";
/// The `User-Agent` of every request: the product and its version.
pub const USER_AGENT: &str = concat!("mgpass-webhooks/", env!("CARGO_PKG_VERSION"));

/// Longest error text kept in an [`AttemptResult`].
const MAX_ERROR_CHARS: usize = 300;
/// Longest redirect target quoted in an error text.
const MAX_LOCATION_CHARS: usize = 200;

/// How one attempt ended. The values are a closed set, fit for metric labels and the delivery log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx response.
    Success,
    /// A response with a status that is neither 2xx nor 3xx.
    HttpError,
    /// A 3xx response; redirects are never followed.
    Redirect,
    /// Connect, TLS, request or response did not finish within the configured timeouts.
    Timeout,
    /// The TCP connection could not be made (refused, unreachable, DNS failure).
    ConnectError,
    /// The TLS handshake failed (untrusted or invalid certificate, protocol mismatch).
    TlsError,
    /// Anything else: a refused URL, a bad header value, a connection reset mid-request.
    RequestError,
    /// Not sent: every connection to the endpoint was busy and none was freed for
    /// `delivery.endpoint_stall_ms`. Counted as a failed attempt so a hanging endpoint cannot hold
    /// up the others.
    EndpointSaturated,
    /// Not sent: the host is, or resolves only to, addresses that are not globally routable and
    /// not allow-listed (`http.allow_private`). Nothing was dialled.
    AddressRefused,
}

impl Outcome {
    /// Every outcome, e.g. to initialise metric series.
    pub const ALL: [Outcome; 9] = [
        Outcome::Success,
        Outcome::HttpError,
        Outcome::Redirect,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::TlsError,
        Outcome::RequestError,
        Outcome::EndpointSaturated,
        Outcome::AddressRefused,
    ];

    /// The label value, identical to the serde form.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::HttpError => "http_error",
            Outcome::Redirect => "redirect",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::TlsError => "tls_error",
            Outcome::RequestError => "request_error",
            Outcome::EndpointSaturated => "endpoint_saturated",
            Outcome::AddressRefused => "address_refused",
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a response status: 2xx succeeds, 3xx is a (never followed) redirect, anything
/// else is an HTTP error.
pub fn classify_status(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Success,
        300..=399 => Outcome::Redirect,
        _ => Outcome::HttpError,
    }
}

/// The outcome of a transport error (no response status).
pub fn classify_error(err: &reqwest::Error) -> Outcome {
    classify_transport(err.is_timeout(), err.is_connect(), &error_chain(err))
}

/// The decision behind [`classify_error`], on the facts it extracts: a timeout anywhere wins; a
/// connect failure whose chain mentions TLS or a certificate is a TLS error, otherwise a connect
/// error; the rest is a request error.
pub fn classify_transport(is_timeout: bool, is_connect: bool, chain: &[String]) -> Outcome {
    if is_timeout {
        return Outcome::Timeout;
    }
    if !is_connect {
        return Outcome::RequestError;
    }
    let mentions_tls = chain.iter().any(|m| {
        let m = m.to_ascii_lowercase();
        ["certificate", "tls", "handshake", "ssl"]
            .iter()
            .any(|word| m.contains(word))
    });
    if mentions_tls {
        Outcome::TlsError
    } else {
        Outcome::ConnectError
    }
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub outcome: Outcome,
    /// The response status, when a response arrived.
    pub status: Option<u16>,
    /// Why the attempt failed, short; `None` on success. Never the URL, a secret or our body.
    pub error: Option<String>,
    /// At most `http.max_response_bytes` of the response body as lossy UTF-8; `None` when empty.
    pub response_excerpt: Option<String>,
    /// From just before the request to the end of reading the response excerpt.
    pub duration: Duration,
    /// How long a 429 or 503 response asked us to wait before the next request (its
    /// `Retry-After`, in seconds or as an HTTP date; a date already past is zero). `None` for
    /// other responses and when the header is absent or unreadable.
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    fn failed(outcome: Outcome, error: String, started: Instant) -> AttemptResult {
        AttemptResult {
            outcome,
            status: None,
            error: Some(error),
            response_excerpt: None,
            duration: started.elapsed(),
            retry_after: None,
        }
    }
}

/// The wait a response asks for: `Retry-After` of a 429 (Too Many Requests) or 503 (Service
/// Unavailable), as delay-seconds or an HTTP date (RFC 9110 §10.2.3), measured from `now`. A
/// date in the past is zero; a value that is neither is ignored (`None`), as is the header on
/// any other status.
pub fn retry_after(
    status: u16,
    value: Option<&HeaderValue>,
    now: std::time::SystemTime,
) -> Option<Duration> {
    if !matches!(status, 429 | 503) {
        return None;
    }
    let value = value?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit is simply a very long wait.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One webhook request. The body is sent as is; `Bytes` makes re-sending on retries a cheap clone.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub url: &'a url::Url,
    pub body: Bytes,
    /// The value of [`SIGNATURE_HEADER`], computed over exactly `body`.
    pub signature: &'a str,
    pub delivery_id: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// The environment variables that name a proxy (see [`Transport::from_env`]).
pub const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// How requests leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Straight to the endpoint, HTTP/2 through `h2` and HTTP/1.1 through hyper's pooled
    /// client, over rustls: the fast path.
    Direct,
    /// reqwest, which honours `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY` (and `HTTP_PROXY` for
    /// `http://` endpoints) from the environment.
    Proxied,
}

impl Transport {
    /// [`Transport::Proxied`] when the environment names a proxy, else [`Transport::Direct`].
    pub fn from_env() -> Transport {
        Transport::from_vars(|name| std::env::var_os(name))
    }

    /// The decision of [`Transport::from_env`] over any variable lookup: a non-empty
    /// `HTTPS_PROXY`, `ALL_PROXY` or `HTTP_PROXY` (either case) means a proxy. `NO_PROXY` alone
    /// does not (there is nothing to bypass).
    pub fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Transport {
        if PROXY_VARIABLES
            .iter()
            .any(|name| var(name).is_some_and(|v| !v.is_empty()))
        {
            Transport::Proxied
        } else {
            Transport::Direct
        }
    }
}

type DirectClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector<Resolver>>,
    http_body_util::Full<Bytes>,
>;

#[derive(Debug, Clone)]
enum Inner {
    /// HTTP/2 through `h2`, HTTP/1.1 through hyper's client.
    Direct {
        h2: std::sync::Arc<h2_pool::Pool>,
        http1: Box<DirectClient>,
    },
    Proxied(reqwest::Client),
}

/// The HTTP client of every delivery: one connection pool shared by all endpoints. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Inner,
    /// The address guard: inside the connectors for names, and here for IP literals.
    resolver: Resolver,
    allow_http: bool,
    max_response_bytes: usize,
    request_timeout: Duration,
}

impl HttpClient {
    /// Builds the client from `http.*`, with the transport [`Transport::from_env`] picks. Fails,
    /// naming `http.ca_bundle`, when the extra CA bundle cannot be read or holds no valid PEM
    /// certificate.
    pub fn new(config: &HttpConfig) -> anyhow::Result<HttpClient> {
        let transport = Transport::from_env();
        let mut resolver = Resolver::from_config(config)?;
        match transport {
            Transport::Direct => {
                tracing::info!("HTTP client: direct (no proxy in the environment)")
            }
            Transport::Proxied => {
                let proxies = net_guard::proxy_hosts(
                    PROXY_VARIABLES
                        .iter()
                        .filter_map(|name| std::env::var(name).ok()),
                );
                tracing::info!(
                    proxies = ?proxies,
                    "HTTP client: through the proxy the environment names (HTTPS_PROXY, \
                     ALL_PROXY, HTTP_PROXY; NO_PROXY bypasses it). The proxy is the one exception \
                     to the address guard: its own address is not checked, and the proxy dials \
                     the endpoints itself (their addresses are checked by our lookup first)"
                );
                resolver = resolver.with_exempt_hosts(proxies);
            }
        }
        HttpClient::with_resolver(config, transport, resolver)
    }

    /// Builds the client from `http.*` with the given transport. Both behave the same (same
    /// headers, timeouts, limits, address guard and outcomes); only [`Transport::Proxied`] uses
    /// proxies.
    pub fn with_transport(config: &HttpConfig, transport: Transport) -> anyhow::Result<HttpClient> {
        HttpClient::with_resolver(config, transport, Resolver::from_config(config)?)
    }

    /// [`HttpClient::with_transport`] with the given guarding resolver (tests decide with
    /// [`net_guard::Lookup::Static`] what names resolve to).
    pub fn with_resolver(
        config: &HttpConfig,
        transport: Transport,
        resolver: Resolver,
    ) -> anyhow::Result<HttpClient> {
        let extra_roots = match &config.ca_bundle {
            Some(path) => read_ca_bundle(path)?,
            None => Vec::new(),
        };
        let inner = match transport {
            Transport::Direct => {
                let tls = tls_config(config, &extra_roots)?;
                let mut h2_tls = tls.clone();
                h2_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Inner::Direct {
                    h2: std::sync::Arc::new(h2_pool::Pool::new(
                        std::sync::Arc::new(h2_tls),
                        resolver.clone(),
                        Duration::from_millis(config.connect_timeout_ms),
                    )),
                    http1: Box::new(direct_client(config, tls, resolver.clone())),
                }
            }
            Transport::Proxied => {
                Inner::Proxied(proxied_client(config, &extra_roots, resolver.clone())?)
            }
        };
        Ok(HttpClient {
            inner,
            resolver,
            allow_http: config.allow_http,
            max_response_bytes: config.max_response_bytes,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        })
    }

    /// Which transport this client uses.
    pub fn transport(&self) -> Transport {
        match self.inner {
            Inner::Direct { .. } => Transport::Direct,
            Inner::Proxied(_) => Transport::Proxied,
        }
    }
}

/// The reqwest client of [`Transport::Proxied`].
fn proxied_client(
    config: &HttpConfig,
    extra_roots: &[CertificateDer<'static>],
    resolver: Resolver,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .dns_resolver(std::sync::Arc::new(resolver))
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(!config.allow_http)
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        // No `.timeout()`: `send` bounds the whole exchange, body included, with
        // `http.request_timeout_ms` exactly as for the direct client (reqwest's own total
        // timeout surfaces as a body error while reading the excerpt, which is not a timeout
        // outcome).
        // Many endpoints, each possibly receiving bursts: keep warm connections around.
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(60))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10));
    for cert in extra_roots {
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_der(cert).context("http.ca_bundle: a certificate")?,
        );
    }
    builder.build().with_context(|| match &config.ca_bundle {
        Some(path) => format!(
            "building the HTTP client with http.ca_bundle {}",
            path.display()
        ),
        None => "building the HTTP client".to_string(),
    })
}

/// The TLS settings of [`Transport::Direct`]: webpki roots plus `http.ca_bundle`, on ring.
fn tls_config(
    config: &HttpConfig,
    extra_roots: &[CertificateDer<'static>],
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert.clone()).with_context(|| {
            format!(
                "http.ca_bundle: {} holds a certificate that cannot be used",
                config
                    .ca_bundle
                    .as_deref()
                    .unwrap_or(std::path::Path::new("?"))
                    .display()
            )
        })?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The hyper client of [`Transport::Direct`] (HTTP/1.1 in practice: origins that choose HTTP/2
/// go through [`h2_pool`]): the same settings as [`proxied_client`].
fn direct_client(
    config: &HttpConfig,
    tls: rustls::ClientConfig,
    resolver: Resolver,
) -> DirectClient {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    // Every name is resolved by the guard, which returns only addresses it allows.
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .build(https)
}

impl HttpClient {
    /// Makes one attempt. Never panics, never returns an error: see [`AttemptResult`].
    pub async fn send(&self, req: Request<'_>) -> AttemptResult {
        let started = Instant::now();
        match req.url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return AttemptResult::failed(
                    Outcome::RequestError,
                    "http:// endpoint refused (http.allow_http is false)".into(),
                    started,
                )
            }
            other => {
                return AttemptResult::failed(
                    Outcome::RequestError,
                    format!("unsupported URL scheme {:?}", truncate(other, 20)),
                    started,
                )
            }
        }
        let mut headers = match request_headers(&req) {
            Ok(h) => h,
            Err(e) => return AttemptResult::failed(Outcome::RequestError, e, started),
        };
        // The connectors dial IP literals without asking a resolver: check them here.
        if let Some(Err(refused)) = self.resolver.check_literal(req.url) {
            return AttemptResult::failed(Outcome::AddressRefused, refused.to_string(), started);
        }
        let client = match &self.inner {
            Inner::Proxied(client) => {
                // Through a proxy, the proxy resolves the name: refuse it when our lookup finds
                // only refused addresses. A failed lookup is left to the proxy (split DNS).
                if let Some(host) = req.url.domain() {
                    if let Err(refused @ net_guard::GuardError::Refused { .. }) =
                        self.resolver.resolve(host).await
                    {
                        return AttemptResult::failed(
                            Outcome::AddressRefused,
                            refused.to_string(),
                            started,
                        );
                    }
                }
                return self.send_proxied(client, req, headers, started).await;
            }
            Inner::Direct { h2, http1 } => {
                if req.url.scheme() != "https" {
                    http1
                } else {
                    match self.send_h2(h2, &req, headers, started).await {
                        Ok(result) => return result,
                        // The origin speaks HTTP/1.1 only.
                        Err(given_back) => {
                            headers = given_back;
                            http1
                        }
                    }
                }
            }
        };
        let uri: hyper::Uri = match req.url.as_str().parse() {
            Ok(uri) => uri,
            Err(_) => {
                return AttemptResult::failed(
                    Outcome::RequestError,
                    "the URL is not a valid request target".into(),
                    started,
                )
            }
        };
        let mut request = hyper::Request::new(http_body_util::Full::new(req.body));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = uri;
        headers.insert(USER_AGENT_NAME, HeaderValue::from_static(USER_AGENT));
        *request.headers_mut() = headers;
        let max = self.max_response_bytes;
        let exchange = async {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let excerpt = read_excerpt(body, max).await;
            Ok::<_, hyper_util::client::legacy::Error>((parts, excerpt))
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Err(_) => self.timed_out(started),
            Ok(Err(e)) => {
                if let Some(refused) = net_guard::find_refusal(&e) {
                    return AttemptResult::failed(
                        Outcome::AddressRefused,
                        refused.to_string(),
                        started,
                    );
                }
                let chain = source_chain(&e);
                let is_timeout = chain
                    .iter()
                    .any(|m| m.contains("timed out") || m.contains("timeout"));
                let outcome = classify_transport(is_timeout, e.is_connect(), &chain);
                AttemptResult::failed(outcome, join_chain(chain), started)
            }
            Ok(Ok((parts, excerpt))) => {
                response_result(parts.status, &parts.headers, excerpt, started)
            }
        }
    }

    /// [`HttpClient::send`] over HTTP/2 through the pool of `h2` connections; `Err` gives the
    /// headers back when the origin does not speak HTTP/2 (nothing was sent).
    async fn send_h2(
        &self,
        pool: &h2_pool::Pool,
        req: &Request<'_>,
        headers: HeaderMap,
        started: Instant,
    ) -> Result<AttemptResult, HeaderMap> {
        let uri: hyper::Uri = match req.url.as_str().parse() {
            Ok(uri) => uri,
            Err(_) => {
                return Ok(AttemptResult::failed(
                    Outcome::RequestError,
                    "the URL is not a valid request target".into(),
                    started,
                ))
            }
        };
        let max = self.max_response_bytes;
        // The headers go into the first request; a request sent again gets them built anew, so
        // an attempt sent once copies nothing (they were checked when the attempt began).
        let mut first = Some(headers);
        let exchange = async {
            // A request the server provably did not process is sent again (a few times at most:
            // the exchange is bounded by the request timeout anyway).
            let mut tries_left = 3;
            loop {
                tries_left -= 1;
                let live = match pool.connection(req.url).await {
                    Ok(h2_pool::Connection::H2(live)) => live,
                    Ok(h2_pool::Connection::Http1) => return Err(()),
                    Err(e) => return Ok(connect_failure(e, started)),
                };
                let mut headers = match first.take() {
                    Some(headers) => headers,
                    None => request_headers(req).unwrap_or_default(),
                };
                headers.insert(USER_AGENT_NAME, HeaderValue::from_static(USER_AGENT));
                headers.insert(CONTENT_LENGTH, HeaderValue::from(req.body.len()));
                let mut request = http::Request::new(());
                *request.method_mut() = hyper::Method::POST;
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers;
                match h2_pool::exchange(&live, request, req.body.clone()).await {
                    Ok((response, stream)) => {
                        let (parts, body) = response.into_parts();
                        let excerpt = read_excerpt(h2_pool::ResponseBody(body), max).await;
                        drop(stream);
                        return Ok(response_result(
                            parts.status,
                            &parts.headers,
                            excerpt,
                            started,
                        ));
                    }
                    Err(h2_pool::SendError::Gone(e)) if tries_left > 0 => {
                        tracing::debug!(error = %e, "HTTP/2 connection gone before the request was sent; connecting again");
                        pool.forget(req.url, &live);
                    }
                    Err(h2_pool::SendError::Refused(e)) if tries_left > 0 => {
                        tracing::debug!(error = %e, "HTTP/2 stream refused before processing; sending it again");
                    }
                    Err(
                        h2_pool::SendError::Gone(e)
                        | h2_pool::SendError::Refused(e)
                        | h2_pool::SendError::Failed(e),
                    ) => {
                        // A connection-level failure ends the connection for every stream;
                        // a stream reset leaves it to the others.
                        if e.is_io() || e.is_go_away() {
                            pool.forget(req.url, &live);
                        }
                        return Ok(AttemptResult::failed(
                            Outcome::RequestError,
                            truncate(&format!("sending the request failed: {e}"), MAX_ERROR_CHARS),
                            started,
                        ));
                    }
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Err(_) => Ok(self.timed_out(started)),
            Ok(Ok(result)) => Ok(result),
            // Known before any request was built, so the headers are normally still here.
            Ok(Err(())) => Err(first
                .take()
                .unwrap_or_else(|| request_headers(req).unwrap_or_default())),
        }
    }

    /// The result of an exchange that outlived `http.request_timeout_ms` (either transport).
    fn timed_out(&self, started: Instant) -> AttemptResult {
        AttemptResult::failed(
            Outcome::Timeout,
            format!(
                "timed out after {} ms (http.request_timeout_ms)",
                self.request_timeout.as_millis()
            ),
            started,
        )
    }

    /// [`HttpClient::send`] through reqwest.
    async fn send_proxied(
        &self,
        client: &reqwest::Client,
        req: Request<'_>,
        headers: HeaderMap,
        started: Instant,
    ) -> AttemptResult {
        let max = self.max_response_bytes;
        let exchange = async {
            let response = client
                .post(req.url.clone())
                .headers(headers)
                .body(req.body)
                .send()
                .await?;
            let status = response.status();
            let headers = response.headers().clone();
            let excerpt = read_excerpt(reqwest::Body::from(response), max).await;
            Ok::<_, reqwest::Error>((status, headers, excerpt))
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Err(_) => self.timed_out(started),
            Ok(Err(e)) => {
                if let Some(refused) = net_guard::find_refusal(&e) {
                    return AttemptResult::failed(
                        Outcome::AddressRefused,
                        refused.to_string(),
                        started,
                    );
                }
                let outcome = classify_error(&e);
                AttemptResult::failed(outcome, error_text(&e), started)
            }
            Ok(Ok((status, headers, excerpt))) => {
                response_result(status, &headers, excerpt, started)
            }
        }
    }
}

/// The result of an attempt for which no HTTP/2 connection could be made.
fn connect_failure(e: h2_pool::ConnectError, started: Instant) -> AttemptResult {
    use h2_pool::ConnectError as E;
    let outcome = match &e {
        E::Guard(refused @ net_guard::GuardError::Refused { .. }) => {
            return AttemptResult::failed(Outcome::AddressRefused, refused.to_string(), started)
        }
        E::Timeout(_) => Outcome::Timeout,
        E::Guard(_) | E::Tcp(_) | E::Handshake(_) => Outcome::ConnectError,
        E::Tls(_) => Outcome::TlsError,
    };
    AttemptResult::failed(outcome, truncate(&e.to_string(), MAX_ERROR_CHARS), started)
}

/// The result of an attempt that got a response with these headers.
fn response_result(
    status: hyper::StatusCode,
    headers: &HeaderMap,
    excerpt: Option<String>,
    started: Instant,
) -> AttemptResult {
    let location = headers.get(LOCATION);
    let wait = retry_after(
        status.as_u16(),
        headers.get(RETRY_AFTER),
        std::time::SystemTime::now(),
    );
    let outcome = classify_status(status.as_u16());
    let error = match outcome {
        Outcome::Success => None,
        Outcome::Redirect => Some(match location {
            Some(to) => format!(
                "redirect not followed (HTTP {} to {})",
                status.as_u16(),
                truncate(&String::from_utf8_lossy(to.as_bytes()), MAX_LOCATION_CHARS)
            ),
            None => format!("redirect not followed (HTTP {})", status.as_u16()),
        }),
        _ => Some(match wait {
            Some(wait) => format!("HTTP {status} (Retry-After {} s)", wait.as_secs()),
            None => format!("HTTP {status}"),
        }),
    };
    AttemptResult {
        outcome,
        status: Some(status.as_u16()),
        error,
        response_excerpt: excerpt,
        duration: started.elapsed(),
        retry_after: wait,
    }
}

fn read_ca_bundle(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)
        .with_context(|| format!("http.ca_bundle: cannot read {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "http.ca_bundle: {} is not a PEM certificate bundle ({e})",
                path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "http.ca_bundle: {} holds no PEM certificate",
            path.display()
        );
    }
    Ok(certs)
}

fn request_headers(req: &Request<'_>) -> Result<HeaderMap, String> {
    let value = |name: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| format!("{name} is not a valid header value"))
    };
    let mut h = HeaderMap::with_capacity(4);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        HeaderName::from_static("x-webhook-signature"),
        value(SIGNATURE_HEADER, req.signature)?,
    );
    h.insert(
        HeaderName::from_static("x-webhook-id"),
        value(DELIVERY_ID_HEADER, req.delivery_id)?,
    );
    h.insert(
        HeaderName::from_static("x-webhook-attempt"),
        HeaderValue::from(req.attempt),
    );
    Ok(h)
}

/// Reads at most `max` bytes of the body, frame by frame; the rest is left unread (an HTTP/1.1
/// connection is then closed rather than reused, an HTTP/2 stream reset). A failure while
/// reading keeps what arrived.
async fn read_excerpt<B>(mut body: B, max: usize) -> Option<String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    let take = chunk.len().min(max - buf.len());
                    buf.extend_from_slice(&chunk[..take]);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "reading the response body failed");
                break;
            }
            None => break,
        }
    }
    if buf.is_empty() {
        return None;
    }
    Some(lossy_excerpt(&buf))
}

/// Lossy UTF-8, without a replacement character for a code point cut at the end by truncation.
fn lossy_excerpt(bytes: &[u8]) -> String {
    let end = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        // An incomplete sequence at the very end (error_len() == None) was cut by us.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    };
    let trimmed = bytes.get(..end).unwrap_or(bytes);
    match std::str::from_utf8(trimmed) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The messages of an error and its sources, the URL left out.
fn error_chain(err: &reqwest::Error) -> Vec<String> {
    // reqwest's own Display appends "for url (...)": describe the kind only.
    let mut out = vec![reqwest_kind(err).to_string()];
    if let Some(source) = std::error::Error::source(err) {
        out.extend(source_chain(source));
    }
    out
}

fn reqwest_kind(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connect failed"
    } else if err.is_builder() {
        "invalid request"
    } else if err.is_body() {
        "request or response body failed"
    } else if err.is_decode() {
        "decoding the response failed"
    } else if err.is_redirect() {
        "redirect refused"
    } else if err.is_request() {
        "sending the request failed"
    } else {
        "request failed"
    }
}

/// The messages of a (hyper) error and its sources; none of them carries the URL.
fn source_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        out.push(e.to_string());
        current = e.source();
    }
    out
}

/// The chain joined with `: `, dropping a message already contained in the previous one (hyper
/// and io errors repeat their cause), truncated.
fn join_chain(chain: Vec<String>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for msg in chain {
        if parts.last().is_some_and(|prev| prev.contains(&msg)) {
            continue;
        }
        parts.push(msg);
    }
    truncate(&parts.join(": "), MAX_ERROR_CHARS)
}

/// A short error text: the chain joined with `: `, dropping a message already contained in the
/// previous one (hyper and io errors repeat their cause), truncated.
fn error_text(err: &reqwest::Error) -> String {
    join_chain(error_chain(err))
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_in_the_environment_selects_the_proxied_transport() {
        use std::collections::HashMap;
        let with = |vars: &[(&str, &str)]| {
            let map: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Transport::from_vars(|name| map.get(name).map(Into::into))
        };
        assert_eq!(with(&[]), Transport::Direct);
        assert_eq!(
            with(&[("NO_PROXY", "*")]),
            Transport::Direct,
            "nothing to bypass"
        );
        assert_eq!(
            with(&[("HTTPS_PROXY", "")]),
            Transport::Direct,
            "empty is unset"
        );
        for name in PROXY_VARIABLES {
            assert_eq!(
                with(&[(name, "http://proxy:3128")]),
                Transport::Proxied,
                "{name}"
            );
        }
    }

    /// The proxied transport checks names before handing a request to the proxy; reqwest's own
    /// connector (used for `NO_PROXY` targets) must refuse as well, at the resolver.
    #[tokio::test]
    async fn the_reqwest_connector_resolves_through_the_guard() {
        let resolver = Resolver::new(
            net_guard::Policy::default(),
            net_guard::Lookup::fixed([("internal.example", vec!["10.0.0.5".parse().unwrap()])]),
        );
        let client = proxied_client(&HttpConfig::default(), &[], resolver).unwrap();
        let err = client
            .post("https://internal.example:9/hook")
            .send()
            .await
            .expect_err("refused");
        let refused = net_guard::find_refusal(&err).expect("the guard's refusal in the chain");
        assert!(
            refused.to_string().contains("10.0.0.5 is private"),
            "{refused}"
        );
    }

    #[test]
    fn status_classification_table() {
        let table = [
            (100, Outcome::HttpError),
            (101, Outcome::HttpError),
            (199, Outcome::HttpError),
            (200, Outcome::Success),
            (201, Outcome::Success),
            (202, Outcome::Success),
            (204, Outcome::Success),
            (299, Outcome::Success),
            (300, Outcome::Redirect),
            (301, Outcome::Redirect),
            (302, Outcome::Redirect),
            (304, Outcome::Redirect),
            (307, Outcome::Redirect),
            (308, Outcome::Redirect),
            (399, Outcome::Redirect),
            (400, Outcome::HttpError),
            (401, Outcome::HttpError),
            (404, Outcome::HttpError),
            (408, Outcome::HttpError),
            (429, Outcome::HttpError),
            (499, Outcome::HttpError),
            (500, Outcome::HttpError),
            (502, Outcome::HttpError),
            (503, Outcome::HttpError),
            (504, Outcome::HttpError),
            (599, Outcome::HttpError),
            (0, Outcome::HttpError),
            (999, Outcome::HttpError),
        ];
        for (status, expected) in table {
            assert_eq!(classify_status(status), expected, "status {status}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_on_429_and_503_only() {
        use std::time::{SystemTime, UNIX_EPOCH};
        // Sun, 06 Nov 1994 08:49:37 GMT
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let v = |s: &'static str| HeaderValue::from_static(s);
        let s = Duration::from_secs;
        #[rustfmt::skip]
        let table: &[(u16, Option<HeaderValue>, Option<Duration>)] = &[
            (429, Some(v("3")), Some(s(3))),
            (503, Some(v(" 120 ")), Some(s(120))),
            (429, Some(v("0")), Some(s(0))),
            (429, Some(v("99999999999999999999999")), Some(s(u64::MAX))),
            // The three HTTP date forms, 10 s after `now`.
            (429, Some(v("Sun, 06 Nov 1994 08:49:47 GMT")), Some(s(10))),
            (503, Some(v("Sunday, 06-Nov-94 08:49:47 GMT")), Some(s(10))),
            (503, Some(v("Sun Nov  6 08:49:47 1994")), Some(s(10))),
            // A date already past: no wait.
            (503, Some(v("Sun, 06 Nov 1994 08:00:00 GMT")), Some(s(0))),
            // Unreadable, negative, fractional, absent: ignored.
            (429, Some(v("soon")), None),
            (429, Some(v("-5")), None),
            (429, Some(v("1.5")), None),
            (429, Some(v("")), None),
            (429, None, None),
            // Other statuses: ignored.
            (500, Some(v("3")), None),
            (302, Some(v("3")), None),
            (200, Some(v("3")), None),
        ];
        for (status, value, expected) in table {
            assert_eq!(
                retry_after(*status, value.as_ref(), now),
                *expected,
                "{status} {value:?}"
            );
        }
        assert!(SystemTime::now() > now);
    }

    #[test]
    fn transport_classification_table() {
        let s = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        let table = [
            (true, false, s(&["timed out"]), Outcome::Timeout),
            // A connect timeout is a timeout.
            (
                true,
                true,
                s(&["connect failed", "tcp connect error"]),
                Outcome::Timeout,
            ),
            (
                false,
                true,
                s(&[
                    "connect failed",
                    "tcp connect error",
                    "Connection refused (os error 111)",
                ]),
                Outcome::ConnectError,
            ),
            (
                false,
                true,
                s(&[
                    "connect failed",
                    "dns error",
                    "failed to lookup address information",
                ]),
                Outcome::ConnectError,
            ),
            (
                false,
                true,
                s(&["connect failed", "invalid peer certificate: UnknownIssuer"]),
                Outcome::TlsError,
            ),
            (
                false,
                true,
                s(&["connect failed", "received fatal alert: HandshakeFailure"]),
                Outcome::TlsError,
            ),
            (false, false, s(&["invalid request"]), Outcome::RequestError),
            // TLS words outside a connect failure do not make a TLS error.
            (
                false,
                false,
                s(&[
                    "sending the request failed",
                    "peer closed connection without sending TLS close_notify",
                ]),
                Outcome::RequestError,
            ),
        ];
        for (timeout, connect, chain, expected) in table {
            assert_eq!(
                classify_transport(timeout, connect, &chain),
                expected,
                "{chain:?}"
            );
        }
    }

    #[test]
    fn outcome_labels_match_serde_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::ALL {
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), o);
            assert!(seen.insert(o.as_str()));
            assert_eq!(o.is_success(), o == Outcome::Success);
        }
    }

    #[test]
    fn excerpt_drops_a_code_point_cut_by_truncation_only() {
        let s = "héllo".as_bytes();
        // Cut inside 'é' (2 bytes at 1..3).
        assert_eq!(lossy_excerpt(&s[..2]), "h");
        assert_eq!(lossy_excerpt(s), "héllo");
        // Invalid bytes in the middle are replaced, not dropped.
        assert_eq!(lossy_excerpt(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("ééé", 2), "éé…");
    }

    #[test]
    fn header_names_are_the_lowercase_forms_used_on_the_wire() {
        assert_eq!(SIGNATURE_HEADER.to_ascii_lowercase(), "x-webhook-signature");
        assert_eq!(DELIVERY_ID_HEADER.to_ascii_lowercase(), "x-webhook-id");
        assert_eq!(ATTEMPT_HEADER.to_ascii_lowercase(), "x-webhook-attempt");
        assert_eq!(
            USER_AGENT,
            format!("mgpass-webhooks/{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
