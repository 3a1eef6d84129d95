//! The raw ceiling: the same receiver driven by a plain reqwest loop with the processor's
//! concurrency, no Kafka involved. Requests look like the processor's (same body shape and size,
//! a valid signature, a unique `X-Webhook-Id`), the client is built like the processor's
//! (rustls, the bench CA, the same pool settings), and the receiver measures them exactly as it
//! measures deliveries. Closed loop (`concurrency` workers back to back) for throughput; open
//! loop (a steady rate, at most `concurrency` outstanding) for latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::sync::Semaphore;

use crate::load::webhook_body;
use crate::receiver::{secret_for, unix_us, Receiver};
use crate::report::{LatencyMs, Window};

/// How the ceiling drives the receiver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `concurrency` workers, each sending back to back, for this long.
    Closed { secs: f64 },
    /// This many requests per second for this long, at most `concurrency` outstanding.
    Open { rate: f64, secs: f64 },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Ceiling {
    pub concurrency: usize,
    /// Endpoints (origins) the requests were spread over.
    pub endpoints: usize,
    pub mode: String,
    pub requests: u64,
    pub failed: u64,
    pub rate: f64,
    pub latency: LatencyMs,
    /// CPU seconds of the bench process (client *and* receiver) per 1,000 requests.
    pub bench_cpu_per_1k: Option<f64>,
}

/// A client configured like the processor's `HttpClient` (src/delivery/http.rs).
fn client(ca_pem: &str) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent("mgpass-bench-ceiling")
        .redirect(reqwest::redirect::Policy::none())
        .https_only(true)
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(60))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .build()
        .context("building the ceiling client")
}

struct Sender {
    client: reqwest::Client,
    /// (URL, secret) of subscription `n` on healthy listener `n`, for each listener used.
    targets: Vec<(String, Vec<u8>)>,
    seq: AtomicU64,
    failed: AtomicU64,
}

impl Sender {
    async fn send_one(&self) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (url, secret) = &self.targets[(seq % self.targets.len() as u64) as usize];
        let body = webhook_body(seq, "rewards.points_awarded", unix_us());
        let signature = mgpass_webhooks::signing::sign(secret, body.as_bytes());
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-webhook-signature", signature)
            .header("x-webhook-id", format!("dlv_ceiling_{seq:032}"))
            .header("x-webhook-attempt", "1")
            .body(body)
            .send()
            .await;
        let ok = match sent {
            Ok(r) => {
                let ok = r.status().is_success();
                let _ = r.bytes().await;
                ok
            }
            Err(_) => false,
        };
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs the ceiling against the first `listeners` healthy listeners of `receiver`, requests
/// spread evenly over them (subscription `n`'s URL and secret on listener `n`).
pub async fn run(
    receiver: &Receiver,
    listeners: usize,
    concurrency: usize,
    mode: Mode,
) -> Result<Ceiling> {
    let sender = Arc::new(Sender {
        client: client(receiver.ca_pem())?,
        targets: (0..listeners.max(1) as u64)
            .map(|n| {
                (
                    receiver.healthy_url(n as usize, n),
                    secret_for(n).into_bytes(),
                )
            })
            .collect(),
        seq: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    // Warm the connections up, as the processor's first deliveries do inside its run.
    for _ in 0..sender.targets.len() {
        sender.send_one().await;
    }
    if sender.failed.load(Ordering::Relaxed) > 0 {
        return Err(anyhow!("the ceiling client cannot reach the receiver"));
    }
    let _ = receiver.take();
    let cpu0 = crate::procfs::cpu_secs(None);
    let started = Instant::now();
    match mode {
        Mode::Closed { secs } => {
            let deadline = started + Duration::from_secs_f64(secs);
            let mut workers = Vec::new();
            for _ in 0..concurrency {
                let s = sender.clone();
                workers.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        s.send_one().await;
                    }
                }));
            }
            for w in workers {
                w.await?;
            }
        }
        Mode::Open { rate, secs } => {
            let total = (rate * secs).round() as u64;
            let limit = Arc::new(Semaphore::new(concurrency));
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut issued = 0u64;
            let mut tasks = tokio::task::JoinSet::new();
            while issued < total {
                tick.tick().await;
                let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
                while issued < due {
                    let permit = limit.clone().acquire_owned().await?;
                    let s = sender.clone();
                    tasks.spawn(async move {
                        s.send_one().await;
                        drop(permit);
                    });
                    issued += 1;
                }
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let cpu1 = crate::procfs::cpu_secs(None);
    let rec = receiver.take();
    let window = Window::of(&rec.arrivals);
    let requests = rec.healthy;
    Ok(Ceiling {
        concurrency,
        endpoints: sender.targets.len(),
        mode: match mode {
            Mode::Closed { secs } => format!("closed loop, {secs:.0} s"),
            Mode::Open { rate, secs } => format!("open loop, {rate:.0}/s for {secs:.0} s"),
        },
        requests,
        failed: sender.failed.load(Ordering::Relaxed),
        rate: window.rate,
        latency: LatencyMs::of(&rec.latency_us),
        bench_cpu_per_1k: match (cpu0, cpu1) {
            (Some(a), Some(b)) if requests > 0 => Some((b - a) / requests as f64 * 1000.0),
            _ => None,
        },
    })
}
