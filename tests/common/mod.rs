//! Shared helpers of the integration tests. They run against a real Kafka broker at
//! `MGPASS_TEST_BOOTSTRAP` (default 127.0.0.1:9092; `scripts/test.sh` starts one) and fail
//! loudly when none answers. Every test gets topics and a consumer group of its own.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mgpass_webhooks::config::{Config, TopicNames};
use mgpass_webhooks::events::RewardsEvent;
use mgpass_webhooks::kafka;
use mgpass_webhooks::processor::{Dispatcher, SourceRef};
use mgpass_webhooks::subscriptions::Subscription;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn bootstrap() -> String {
    std::env::var("MGPASS_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A unique prefix for one test's topics and group.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}-{name}-{}.",
        nanos % 1_000_000_000_000,
        std::process::id()
    )
}

/// A config for one test: own topics and group, admin server on an ephemeral port.
pub fn config(name: &str) -> Config {
    let prefix = unique(name);
    let mut c = Config::default();
    c.kafka.bootstrap_servers = bootstrap();
    c.kafka.group_id = format!("{prefix}group");
    c.topics = TopicNames::with_prefix(&prefix);
    c.topic_setup.partitions = 3;
    c.topic_setup.subscription_partitions = 3;
    c.topic_setup.replication_factor = 1;
    c.admin.listen = "127.0.0.1:0".into();
    // The receivers run on loopback, which the address guard refuses unless allow-listed.
    c.http.allow_private = vec!["127.0.0.0/8".into()];
    c
}

/// Creates the test's topics, panicking with instructions when Kafka is not there.
pub async fn setup_topics(c: &Config) {
    if let Err(e) = kafka::check_reachable(c, Duration::from_secs(15)) {
        panic!(
            "Kafka is required for this test and is not reachable: {e:#}.\n\
             Start it with `bash scripts/kafka.sh start` or run the suite with `bash scripts/test.sh`."
        );
    }
    mgpass_webhooks::topics::setup(c)
        .await
        .expect("topic setup");
}

pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("test producer")
}

/// Produces records in order (enqueued one after another) and waits for every acknowledgement.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<String>, Option<Vec<u8>>)],
) {
    let mut acks = Vec::with_capacity(records.len());
    for (key, value) in records {
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
        if let Some(k) = key {
            r = r.key(k.as_str());
        }
        if let Some(v) = value {
            r = r.payload(v.as_slice());
        }
        loop {
            match producer.send_result(r) {
                Ok(ack) => {
                    acks.push(ack);
                    break;
                }
                Err((e, back)) => {
                    // Queue full: let it drain, then retry the same record.
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce failed: {e}"
                    );
                    r = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    for ack in acks {
        ack.await
            .expect("delivery future dropped")
            .expect("record not acknowledged");
    }
}

/// Reads every record of `topic` from the beginning until `count` arrived or `timeout` passed.
pub async fn read_topic(topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.auto.commit", "false")
        .set("group.id", "test-reader-never-joins")
        .create()
        .expect("test reader");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// What a [`ChannelDispatcher`] saw for one event.
pub type Dispatched = (SourceRef, Arc<RewardsEvent>, Vec<Arc<Subscription>>);

/// A dispatcher that hands every event to the test.
pub struct ChannelDispatcher(pub tokio::sync::mpsc::UnboundedSender<Dispatched>);

impl Dispatcher for ChannelDispatcher {
    async fn dispatch(
        &self,
        source: SourceRef,
        event: Arc<RewardsEvent>,
        subscriptions: Vec<Arc<Subscription>>,
    ) -> anyhow::Result<()> {
        let _ = self.0.send((source, event, subscriptions));
        Ok(())
    }
}

/// A valid subscription record as JSON.
pub fn subscription_json(id: &str, url: &str, event_types: &[&str], secret: &str) -> Vec<u8> {
    serde_json::json!({"id": id, "url": url, "event_types": event_types, "secret": secret})
        .to_string()
        .into_bytes()
}

pub fn event_json(event_type: &str, user: &str) -> Vec<u8> {
    serde_json::json!({
        "event_type": event_type,
        "data": {"user_id": user, "points": 150.0},
        "timestamp": "2025-01-15T10:30:00.000Z"
    })
    .to_string()
    .into_bytes()
}
pub mod receiver;
