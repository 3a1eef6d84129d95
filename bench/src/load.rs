//! The benchmark's Kafka side: topics of a run (created with the product's own topic setup,
//! deleted afterwards), subscription records, and rewards events produced as a backlog or at a
//! steady pace. Every event carries `data.sent_us`, the Unix microseconds at which it was handed
//! to the producer; the receiver turns it into the end-to-end latency.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mgpass_testkit::fixtures::{await_acks, enqueue};
use mgpass_webhooks::config::Config;
use rdkafka::admin::AdminOptions;
use rdkafka::producer::FutureProducer;

use crate::receiver::unix_us;

/// The `data` object of event number `seq`: the guide's sample fields plus the bench's own.
pub fn event_data(seq: u64, sent_us: i64) -> String {
    format!(
        r#"{{"user_id":"usr_{seq:09}","points":150,"event_type":"purchase","platform":"3news","seq":{seq},"sent_us":{sent_us}}}"#
    )
}

/// A rewards event record value.
pub fn event_json(seq: u64, event_type: &str, client_id: Option<&str>, sent_us: i64) -> Vec<u8> {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let data = event_data(seq, sent_us);
    match client_id {
        Some(c) => format!(
            r#"{{"event_type":"{event_type}","data":{data},"timestamp":"{ts}","client_id":"{c}"}}"#
        ),
        None => format!(r#"{{"event_type":"{event_type}","data":{data},"timestamp":"{ts}"}}"#),
    }
    .into_bytes()
}

/// The webhook body the processor sends for such an event (for the ceiling's requests).
pub fn webhook_body(seq: u64, event_type: &str, sent_us: i64) -> String {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"event_type":"{event_type}","data":{},"timestamp":"{ts}"}}"#,
        event_data(seq, sent_us)
    )
}

/// Creates the run's topics with the product's topic setup.
pub async fn create_topics(config: &Config) -> Result<()> {
    mgpass_webhooks::kafka::check_reachable(config, Duration::from_secs(15))?;
    mgpass_webhooks::topics::setup(config)
        .await
        .context("creating the run's topics")?;
    Ok(())
}

/// Deletes the run's topics (best effort).
pub async fn delete_topics(config: &Config) {
    let Ok(admin) = mgpass_webhooks::kafka::admin(config) else {
        return;
    };
    let names: Vec<&str> = config.topics.all().iter().map(|(_, n)| *n).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    if let Err(e) = admin.delete_topics(&names, &opts).await {
        eprintln!("[bench] could not delete the run's topics: {e}");
    }
}

/// Produces `n` events made by `make(seq)` (key, value) as fast as the broker takes them.
/// Returns the time it took, acknowledgements included.
pub async fn produce_backlog(
    producer: &FutureProducer,
    topic: &str,
    n: u64,
    make: impl Fn(u64) -> (String, Vec<u8>),
) -> Result<Duration> {
    let started = Instant::now();
    let mut acks = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let (k, v) = make(seq);
        acks.push(enqueue(producer, topic, Some(k.as_bytes()), Some(&v)).await?);
    }
    await_acks(acks, topic).await?;
    Ok(started.elapsed())
}

/// What a paced production achieved.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Paced {
    pub sent: u64,
    pub secs: f64,
    /// Largest delay behind the schedule at which an event was handed to the producer.
    pub max_behind_ms: f64,
}

/// Produces `rate` events per second for `secs` seconds, stamping each when it is handed to the
/// producer (so a late producer does not hide latency).
pub async fn produce_paced(
    producer: &FutureProducer,
    topic: &str,
    rate: f64,
    secs: f64,
    make: impl Fn(u64) -> (String, Vec<u8>),
) -> Result<Paced> {
    let total = (rate * secs).round() as u64;
    let started = Instant::now();
    let mut acks = Vec::with_capacity(total as usize);
    let mut sent = 0u64;
    let mut max_behind = 0f64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((elapsed * rate) as u64).min(total);
        while sent < due {
            let scheduled = sent as f64 / rate;
            max_behind = max_behind.max((elapsed - scheduled) * 1000.0);
            let (k, v) = make(sent);
            acks.push(enqueue(producer, topic, Some(k.as_bytes()), Some(&v)).await?);
            sent += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    await_acks(acks, topic).await?;
    Ok(Paced {
        sent,
        secs,
        max_behind_ms: max_behind,
    })
}

/// `make` for [`produce_backlog`] / [`produce_paced`]: event `seq` of `event_type` and client.
pub fn stamped_event(seq: u64, event_type: &str, client_id: Option<&str>) -> (String, Vec<u8>) {
    (
        format!("usr_{seq:09}"),
        event_json(seq, event_type, client_id, unix_us()),
    )
}
