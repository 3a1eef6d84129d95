//! The HTTP/2 connections of the direct transport: one per origin, shared by every attempt to
//! it, driven by the `h2` crate itself.
//!
//! hyper's pooled client puts three layers over `h2` for each request: the pool checkout (a lock,
//! the origin key built again, connection extras), a dispatch channel to the connection's task
//! with a oneshot for the response, and a task spawned to stream the body. Together they cost
//! about a sixth of the processor's CPU per delivery (docs/benchmarks.md). Here an attempt opens
//! its stream on the shared connection and writes its body itself, and the connection's task
//! only drives the socket.
//!
//! What it keeps of hyper's client: one connection per origin (HTTP/2 multiplexes up to the
//! server's stream limit, beyond which `h2` holds new streams until one ends), keep-alive pings
//! every 30 s answered within 10 s (a connection that does not answer is dropped), idle origins
//! forgotten after 90 s, TCP no-delay and keep-alive, names resolved only through the address
//! guard, and a request that was provably never processed sent again: on a new connection when
//! the connection had already gone, on the same one when the server refused the stream (RFC 9113
//! §8.7: a burst on a new connection opens streams before the server's limit is known). An
//! origin whose TLS handshake does not choose `h2` by ALPN is remembered as HTTP/1.1 and left to
//! hyper's client ([`Connection::Http1`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::net_guard::{GuardError, Resolver};

/// Interval of the keep-alive pings of a connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keep-alive ping may wait for its answer before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an origin without attempts keeps its connection (and its HTTP/1.1 mark).
const IDLE: Duration = Duration::from_secs(90);
/// Receive windows (the responses): as hyper's client sets them.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// A live HTTP/2 connection to one origin. Cheap to clone.
#[derive(Clone)]
pub struct Live {
    send: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when it ends.
    closed: Arc<AtomicBool>,
}

/// How to reach an origin.
pub enum Connection {
    H2(Live),
    /// The server did not choose HTTP/2: use the HTTP/1.1 client.
    Http1,
}

/// Why no connection could be made. The texts name neither the URL nor the address dialled.
#[derive(Debug)]
pub enum ConnectError {
    /// The address guard refused the host, or it did not resolve.
    Guard(GuardError),
    /// No TCP connection within `http.connect_timeout_ms`.
    Timeout(Duration),
    Tcp(std::io::Error),
    Tls(std::io::Error),
    /// The HTTP/2 preface or settings exchange failed.
    Handshake(h2::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Guard(e) => write!(f, "connect failed: {e}"),
            ConnectError::Timeout(t) => write!(
                f,
                "tcp connect error: timed out after {} ms (http.connect_timeout_ms)",
                t.as_millis()
            ),
            ConnectError::Tcp(e) => write!(f, "tcp connect error: {e}"),
            ConnectError::Tls(e) => write!(f, "tls handshake failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "http2 handshake failed: {e}"),
        }
    }
}

/// An exchange that failed after a connection was found.
pub enum SendError {
    /// The connection had gone before the request was sent: connect again and send it.
    Gone(h2::Error),
    /// The server refused the stream without processing it (RFC 9113 §8.7), e.g. because it
    /// was opened before the server's stream limit was known: send it again on the same
    /// connection.
    Refused(h2::Error),
    /// Anything else: the server may have seen the request.
    Failed(h2::Error),
}

/// A response: status, headers and the body, still to be read.
pub type Response = http::Response<h2::RecvStream>;

/// The connections of every origin.
pub struct Pool {
    origins: Mutex<HashMap<String, Arc<Origin>>>,
    tls: tokio_rustls::TlsConnector,
    resolver: Resolver,
    connect_timeout: Duration,
    epoch: Instant,
    next_sweep_ms: AtomicU64,
}

struct Origin {
    live: Mutex<Option<Live>>,
    /// Held while connecting: one handshake per origin at a time; the others wait for it.
    connecting: tokio::sync::Mutex<()>,
    http1: AtomicBool,
    last_used_ms: AtomicU64,
}

impl Origin {
    fn current(&self) -> Option<Live> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .filter(|l| !l.closed.load(Ordering::Acquire))
            .cloned()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h2::Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// `tls` must offer `h2` and `http/1.1` by ALPN.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        resolver: Resolver,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            origins: Mutex::new(HashMap::new()),
            tls: tokio_rustls::TlsConnector::from(tls),
            resolver,
            connect_timeout,
            epoch: Instant::now(),
            next_sweep_ms: AtomicU64::new(0),
        }
    }

    /// The state of the origin `key` (`https://host[:port]`), made if new; forgets origins idle
    /// for [`IDLE`] on the way (their connections close once their last stream ends).
    fn origin(&self, key: &str) -> Arc<Origin> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let idle = IDLE.as_millis() as u64;
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        if now >= self.next_sweep_ms.load(Ordering::Relaxed) {
            self.next_sweep_ms.store(now + idle / 4, Ordering::Relaxed);
            origins
                .retain(|_, o| now.saturating_sub(o.last_used_ms.load(Ordering::Relaxed)) < idle);
        }
        let origin = match origins.get(key) {
            Some(o) => o.clone(),
            None => {
                let o = Arc::new(Origin {
                    live: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                    http1: AtomicBool::new(false),
                    last_used_ms: AtomicU64::new(now),
                });
                origins.insert(key.to_string(), o.clone());
                o
            }
        };
        origin.last_used_ms.fetch_max(now, Ordering::Relaxed);
        origin
    }

    /// The connection to the origin of `url` (an `https` URL), made if there is none alive.
    pub async fn connection(&self, url: &url::Url) -> Result<Connection, ConnectError> {
        let origin = self.origin(&url[..url::Position::AfterPort]);
        if origin.http1.load(Ordering::Relaxed) {
            return Ok(Connection::Http1);
        }
        if let Some(live) = origin.current() {
            return Ok(Connection::H2(live));
        }
        let _connecting = origin.connecting.lock().await;
        // Another attempt may have connected while this one waited.
        if origin.http1.load(Ordering::Relaxed) {
            return Ok(Connection::Http1);
        }
        if let Some(live) = origin.current() {
            return Ok(Connection::H2(live));
        }
        let connection = self.connect(url).await?;
        match &connection {
            Connection::H2(live) => {
                *origin.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
            }
            Connection::Http1 => {
                tracing::debug!(
                    origin = &url[..url::Position::AfterPort],
                    "the server did not choose HTTP/2; using HTTP/1.1"
                );
                origin.http1.store(true, Ordering::Relaxed);
            }
        }
        Ok(connection)
    }

    /// Forgets `live` as the connection of the origin of `url` (it failed): the next attempt
    /// connects again.
    pub fn forget(&self, url: &url::Url, live: &Live) {
        let origin = self.origin(&url[..url::Position::AfterPort]);
        let mut current = origin.live.lock().unwrap_or_else(|e| e.into_inner());
        if current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.closed, &live.closed))
        {
            *current = None;
        }
    }

    async fn connect(&self, url: &url::Url) -> Result<Connection, ConnectError> {
        let port = url.port_or_known_default().unwrap_or(443);
        let (addrs, name) = match url.host() {
            Some(url::Host::Domain(d)) => (
                self.resolver
                    .resolve(d)
                    .await
                    .map_err(ConnectError::Guard)?,
                d.to_string(),
            ),
            // IP literals were checked by the caller.
            Some(url::Host::Ipv4(v4)) => (vec![IpAddr::V4(v4)], v4.to_string()),
            Some(url::Host::Ipv6(v6)) => (vec![IpAddr::V6(v6)], v6.to_string()),
            None => return Err(ConnectError::Guard(GuardError::NoAddress)),
        };
        let tcp = self.dial(&addrs, port).await?;
        let server_name = rustls::pki_types::ServerName::try_from(name).map_err(|e| {
            ConnectError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Ok(Connection::Http1);
        }
        let (send, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(ConnectError::Handshake)?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = connection.ping_pong();
        tokio::spawn(drive(connection, pings, closed.clone()));
        Ok(Connection::H2(Live { send, closed }))
    }

    /// A TCP connection to the first of `addrs` that answers within the connect timeout.
    async fn dial(&self, addrs: &[IpAddr], port: u16) -> Result<TcpStream, ConnectError> {
        let mut last = ConnectError::Guard(GuardError::NoAddress);
        for ip in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect((*ip, port))).await
            {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
                    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
                    return Ok(tcp);
                }
                Ok(Err(e)) => last = ConnectError::Tcp(e),
                Err(_) => last = ConnectError::Timeout(self.connect_timeout),
            }
        }
        Err(last)
    }
}

/// Drives a connection until it ends, or until a keep-alive ping goes unanswered.
async fn drive(
    connection: h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>,
    pings: Option<h2::PingPong>,
    closed: Arc<AtomicBool>,
) {
    let keepalive = async move {
        let Some(mut pings) = pings else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(KEEPALIVE_INTERVAL).await;
            match tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return "the connection failed",
                Err(_) => return "no answer to a keep-alive ping",
            }
        }
    };
    tokio::select! {
        ended = connection => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
            }
        }
        why = keepalive => tracing::debug!(why, "HTTP/2 connection dropped"),
    }
    closed.store(true, Ordering::Release);
}

/// Sends `request` with `body` on `live` and waits for the response head.
pub async fn exchange(
    live: &Live,
    request: http::Request<()>,
    body: Bytes,
) -> Result<(Response, h2::SendStream<Bytes>), SendError> {
    // A connection that has gone fails here, before anything is sent.
    let mut send = live.send.clone().ready().await.map_err(SendError::Gone)?;
    let (response, mut stream) = send
        .send_request(request, body.is_empty())
        .map_err(SendError::Gone)?;
    if !body.is_empty() {
        stream.send_data(body, true).map_err(SendError::Failed)?;
    }
    match response.await {
        Ok(response) => Ok((response, stream)),
        Err(e) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => Err(SendError::Refused(e)),
        Err(e) => Err(SendError::Failed(e)),
    }
}

/// A response body as hyper's [`hyper::body::Body`], releasing flow-control capacity for each
/// chunk taken (so the server may send more); dropping it before the end resets the stream.
pub struct ResponseBody(pub h2::RecvStream);

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, h2::Error>>> {
        let polled = std::task::ready!(self.0.poll_data(cx));
        std::task::Poll::Ready(polled.map(|chunk| {
            chunk.map(|chunk| {
                let _ = self.0.flow_control().release_capacity(chunk.len());
                hyper::body::Frame::data(chunk)
            })
        }))
    }
}
