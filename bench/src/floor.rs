//! The Kafka floor of the latency runs: the same paced events through the same broker, read by a
//! plain librdkafka consumer with default fetch settings (as the processor's consumer has) and no
//! processing. Its produce → consume latency is the part of the end-to-end latency the
//! processor cannot remove; the rest is the processor's (and the HTTP hop's). The broker's CPU
//! over the floor is what producing and plainly consuming those events costs it: the part of a
//! paced run's broker CPU that is not the processor's doing (its outputs, commits and retry
//! tiers are the rest).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::procfs::{CpuDelta, CpuSample};
use crate::receiver::{stamp, unix_us};
use crate::report::LatencyMs;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Floor {
    pub rate: f64,
    pub secs: f64,
    pub received: u64,
    pub latency: LatencyMs,
    /// Broker CPU seconds per 1,000 events, from the first produced to the last received
    /// (`--broker-pid`).
    pub broker_cpu_per_1k: Option<f64>,
}

pub async fn run(
    bootstrap: &str,
    producer: &FutureProducer,
    partitions: i32,
    rate: f64,
    secs: f64,
    broker_pid: Option<u32>,
) -> Result<Floor> {
    let stamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("bench-{stamp_ms}-floor.rewards.events");
    let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| anyhow!("admin client: {e}"))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &opts,
        )
        .await
        .context("creating the floor topic")?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no result creating the floor topic"))?
        .map_err(|(t, e)| anyhow!("creating {t}: {e}"))?;
    let result = measure(
        bootstrap, producer, &topic, partitions, rate, secs, broker_pid,
    )
    .await;
    let _ = admin.delete_topics(&[&topic], &opts).await;
    result
}

async fn measure(
    bootstrap: &str,
    producer: &FutureProducer,
    topic: &str,
    partitions: i32,
    rate: f64,
    secs: f64,
    broker_pid: Option<u32>,
) -> Result<Floor> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "mgpass-bench-floor-never-joins")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| anyhow!("floor consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // Let the consumer find the leaders and start fetching before the clock starts.
    let _ = tokio::time::timeout(Duration::from_millis(1500), consumer.recv()).await;

    let total = (rate * secs).round() as u64;
    let before = CpuSample::take(None, broker_pid);
    let producing = {
        let producer = producer.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            crate::load::produce_paced(&producer, &topic, rate, secs, |seq| {
                crate::load::stamped_event(seq, "rewards.points_awarded", None)
            })
            .await
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs + 30.0);
    let mut received = 0u64;
    while received < total {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => {
                let now = unix_us();
                if let Some(sent) = m.payload().and_then(stamp) {
                    hist.saturating_record((now - sent).max(1) as u64);
                    received += 1;
                }
            }
            Ok(Err(e)) => return Err(anyhow!("floor consumer: {e}")),
            Err(_) => break,
        }
    }
    let broker_secs = CpuDelta::between(&before, &CpuSample::take(None, broker_pid)).broker_secs;
    producing.await??;
    Ok(Floor {
        rate,
        secs,
        received,
        latency: LatencyMs::of(&hist),
        broker_cpu_per_1k: broker_secs
            .filter(|_| received > 0)
            .map(|s| s / received as f64 * 1000.0),
    })
}
