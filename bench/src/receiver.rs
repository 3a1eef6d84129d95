//! The benchmark's webhook receiver: HTTPS (HTTP/2 and HTTP/1.1, ALPN configurable) on several
//! `127.0.0.1` listeners with a certificate issued by a throw-away CA. Each listener is its own
//! origin (the processor limits concurrency per origin), and is either *healthy* (answers
//! `200` at once) or *hanging* (never answers; the client gives up at its timeout).
//!
//! A healthy request is measured on arrival: the end-to-end latency is "now" minus the
//! `data.sent_us` the producer stamped into the event (Unix microseconds; below 2^53 so the body
//! stays exact for JavaScript), its `X-Webhook-Id` is checked for duplicates, and when the path is
//! `/s/<n>` its `X-Webhook-Signature` is verified with [`secret_for`]`(n)`. Counting happens
//! after recording, so a waiter that sees the count also sees the record.
//!
//! The certificates and the HTTPS server loop are [`mgpass_testkit::https`], shared with
//! the tests' receiver. Unlike the tests' receiver it keeps no bodies: it must stay cheap at tens of thousands of
//! requests per second on the same two cores as the processor and the broker.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mgpass_testkit::https::{self, response, Handler, LocalTls, Response};
use mgpass_webhooks::signing;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The secret of benchmark subscription number `n` (its URL path is `/s/<n>`).
pub fn secret_for(n: u64) -> String {
    format!("bench-secret-{n:08}")
}

/// Print every healthy request slower than this (end to end, microseconds) to stderr; 0 = off.
/// A diagnostic for latency tails: the arrival times show whether slow deliveries come in bursts
/// and when (they lined up with the broker's young-generation GC pauses, for example).
pub static LOG_SLOW_US: AtomicU64 = AtomicU64::new(0);

fn log_slow(now_us: i64, latency_us: u64, path: &str) {
    let at = chrono::DateTime::from_timestamp_micros(now_us)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    eprintln!(
        "[bench] slow delivery: arrived {at} UTC, {:.1} ms after production, {path}",
        latency_us as f64 / 1000.0
    );
}

/// Unix time in microseconds.
pub fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Which protocols the listeners offer in the TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Alpn {
    /// `h2` then `http/1.1` (what most HTTPS servers offer; reqwest then picks HTTP/2).
    Both,
    /// HTTP/2 only.
    H2,
    /// HTTP/1.1 only (reqwest then opens a connection per concurrent request).
    Http1,
}

/// What a set of requests looked like; taken with [`Receiver::take`].
pub struct Recording {
    /// End-to-end latency in microseconds, healthy requests only.
    pub latency_us: Histogram<u64>,
    /// Arrival times of healthy requests, in order.
    pub arrivals: Vec<Instant>,
    pub healthy: u64,
    pub duplicates: u64,
    pub bad_signatures: u64,
    /// Healthy requests whose body had no readable `sent_us`.
    pub unstamped: u64,
    /// Requests to hanging listeners.
    pub hung: u64,
    seen: HashSet<u64>,
}

impl Recording {
    fn new() -> Recording {
        Recording {
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
            arrivals: Vec::new(),
            healthy: 0,
            duplicates: 0,
            bad_signatures: 0,
            unstamped: 0,
            hung: 0,
            seen: HashSet::new(),
        }
    }

    pub fn last(&self) -> Option<Instant> {
        self.arrivals.last().copied()
    }
}

struct Shared {
    cancel: CancellationToken,
    /// Healthy requests recorded since the last [`Receiver::take`] (distinct ones).
    healthy: AtomicU64,
    hung: AtomicU64,
    rec: Mutex<Recording>,
}

/// The running receiver; dropping it stops every listener and connection.
pub struct Receiver {
    shared: Arc<Shared>,
    healthy: Vec<SocketAddr>,
    hanging: Vec<SocketAddr>,
    ca_pem: String,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        for l in &self.listeners {
            l.abort();
        }
    }
}

impl Receiver {
    /// Starts `healthy` answering listeners and `hanging` never-answering ones.
    pub async fn start(healthy: usize, hanging: usize, alpn: Alpn) -> Result<Receiver> {
        let tls = LocalTls::generate("mgpass-bench CA")?;
        let acceptor = tls.acceptor(match alpn {
            Alpn::Both => &[b"h2", b"http/1.1"],
            Alpn::H2 => &[b"h2"],
            Alpn::Http1 => &[b"http/1.1"],
        })?;
        let shared = Arc::new(Shared {
            cancel: CancellationToken::new(),
            healthy: AtomicU64::new(0),
            hung: AtomicU64::new(0),
            rec: Mutex::new(Recording::new()),
        });
        let mut r = Receiver {
            shared: shared.clone(),
            healthy: Vec::new(),
            hanging: Vec::new(),
            ca_pem: tls.ca_pem,
            listeners: Vec::new(),
        };
        for i in 0..healthy + hanging {
            let hang = i >= healthy;
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a receiver listener")?;
            let addr = listener.local_addr()?;
            if hang {
                r.hanging.push(addr);
            } else {
                r.healthy.push(addr);
            }
            let handler: Handler = {
                let shared = shared.clone();
                if hang {
                    Arc::new(move |_req| Box::pin(handle_hang(shared.clone())))
                } else {
                    Arc::new(move |req| Box::pin(handle_healthy(shared.clone(), req)))
                }
            };
            // Far above any per-endpoint limit the processor is run with.
            r.listeners.push(tokio::spawn(https::serve(
                listener,
                Some(acceptor.clone()),
                4096,
                handler,
            )));
        }
        Ok(r)
    }

    /// `https://127.0.0.1:PORT/s/<n>` on healthy listener `listener` (modulo their number).
    pub fn healthy_url(&self, listener: usize, n: u64) -> String {
        let a = self.healthy[listener % self.healthy.len()];
        format!("https://127.0.0.1:{}/s/{n}", a.port())
    }

    /// `https://127.0.0.1:PORT/s/<n>` on hanging listener `n` mod their number.
    pub fn hanging_url(&self, n: u64) -> String {
        assert!(!self.hanging.is_empty(), "a hanging listener");
        let a = self.hanging[(n % self.hanging.len() as u64) as usize];
        format!("https://127.0.0.1:{}/s/{n}", a.port())
    }

    pub fn healthy_listeners(&self) -> usize {
        self.healthy.len()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Distinct healthy requests recorded since the last [`Receiver::take`].
    pub fn healthy_count(&self) -> u64 {
        self.shared.healthy.load(Ordering::Acquire)
    }

    pub fn hung_count(&self) -> u64 {
        self.shared.hung.load(Ordering::Relaxed)
    }

    /// Returns what was recorded so far and starts a fresh recording.
    pub fn take(&self) -> Recording {
        let mut rec = self.shared.rec.lock().expect("recording lock");
        let mut out = std::mem::replace(&mut *rec, Recording::new());
        out.hung = self.shared.hung.swap(0, Ordering::Relaxed);
        self.shared.healthy.store(0, Ordering::Release);
        out
    }
}

async fn handle_healthy(shared: Arc<Shared>, req: hyper::Request<Incoming>) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return response(400, Bytes::new());
    };
    let now_us = unix_us();
    let arrived = Instant::now();
    let sent_us = stamp(&body);
    let id_hash = parts.headers.get("x-webhook-id").map(|v| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.as_bytes().hash(&mut h);
        h.finish()
    });
    let signature_ok = parts
        .uri
        .path()
        .strip_prefix("/s/")
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| {
            signing::verify(
                secret_for(n).as_bytes(),
                &body,
                parts
                    .headers
                    .get("x-webhook-signature")
                    .map_or(&b""[..], |v| v.as_bytes()),
            )
        });
    {
        let mut rec = shared.rec.lock().expect("recording lock");
        let fresh = match id_hash {
            Some(h) => rec.seen.insert(h),
            None => true,
        };
        if !fresh {
            rec.duplicates += 1;
        } else {
            if signature_ok == Some(false) {
                rec.bad_signatures += 1;
            }
            match sent_us {
                Some(sent) => {
                    let lat = (now_us - sent).max(1) as u64;
                    rec.latency_us.saturating_record(lat);
                    let slow = LOG_SLOW_US.load(Ordering::Relaxed);
                    if slow > 0 && lat > slow {
                        log_slow(now_us, lat, parts.uri.path());
                    }
                }
                None => rec.unstamped += 1,
            }
            // Taken under the lock, so arrivals are in order.
            let last = rec.last().unwrap_or(arrived);
            rec.arrivals.push(arrived.max(last));
            rec.healthy += 1;
            shared.healthy.fetch_add(1, Ordering::Release);
        }
    }
    response(200, Bytes::new())
}

async fn handle_hang(shared: Arc<Shared>) -> Response {
    shared.hung.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        _ = shared.cancel.cancelled() => {}
    }
    response(503, Bytes::new())
}

/// `data.sent_us` of a webhook body, read without parsing the JSON.
pub fn stamp(body: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"sent_us\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: &[u8] = &body[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stamp_without_parsing() {
        assert_eq!(
            stamp(br#"{"data":{"seq":1,"sent_us":1764200000123456},"x":1}"#),
            Some(1764200000123456)
        );
        assert_eq!(stamp(br#"{"data":{}}"#), None);
    }
}
