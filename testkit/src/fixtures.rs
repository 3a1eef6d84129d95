//! Kafka fixtures against a real broker at `MGPASS_TEST_BOOTSTRAP` (default 127.0.0.1:9092): a
//! test's own topics and consumer group, producers that wait for every acknowledgement, and
//! bounded reads of a topic from the beginning. Nothing here skips when Kafka is missing: it
//! panics (tests) or returns an error (the benchmark) naming what to start.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use mgpass_webhooks::config::{Config, TopicNames};
use mgpass_webhooks::kafka;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
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

/// A config for one test: own topics and group, admin server on an ephemeral port. Its new
/// group reads the events topic from the beginning: tests produce before they start.
pub fn config(name: &str) -> Config {
    let prefix = unique(name);
    let mut c = Config::default();
    c.kafka.bootstrap_servers = bootstrap();
    c.kafka.group_id = format!("{prefix}group");
    c.kafka.events_offset_reset = "earliest".into();
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

/// The producer of the rewards services and admins, as tests and the benchmark play them:
/// idempotent, `acks=all`, a local queue deep enough for a benchmark's backlog.
pub fn producer_to(bootstrap: &str, linger_ms: u32) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "mgpass-testkit-producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000")
        .create()
        .map_err(|e| anyhow!("creating the producer for {bootstrap}: {e}"))
}

/// The tests' producer: [`producer_to`] the test broker, lingering 5 ms.
pub fn producer() -> FutureProducer {
    producer_to(&bootstrap(), 5).expect("test producer")
}

/// Enqueues one record, waiting while the local queue is full.
pub async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<DeliveryFuture> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    loop {
        match producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(anyhow!("producing to {topic:?}: {e}")),
        }
    }
}

/// Waits for every acknowledgement, failing on the first record the broker did not take.
pub async fn await_acks(acks: Vec<DeliveryFuture>, topic: &str) -> Result<()> {
    for ack in acks {
        ack.await
            .map_err(|_| anyhow!("producer dropped a record for {topic:?}"))?
            .map_err(|(e, _)| anyhow!("record to {topic:?} not acknowledged: {e}"))?;
    }
    Ok(())
}

/// Produces `(key, value)` records in order (enqueued one after another; `None` value = a
/// tombstone) and waits for every acknowledgement. Returns how many were produced.
pub async fn try_produce_all<K, V>(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (Option<K>, Option<V>)>,
) -> Result<u64>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut acks = Vec::new();
    for (k, v) in records {
        let key = k.as_ref().map(AsRef::as_ref);
        let value = v.as_ref().map(AsRef::as_ref);
        acks.push(enqueue(producer, topic, key, value).await?);
    }
    let n = acks.len() as u64;
    await_acks(acks, topic).await?;
    Ok(n)
}

/// [`try_produce_all`] for tests: panics naming the error.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[(Option<String>, Option<Vec<u8>>)],
) {
    if let Err(e) = try_produce_all(producer, topic, records.iter().cloned()).await {
        panic!("produce failed: {e:#}");
    }
}

/// A consumer of every partition of `topic` on `bootstrap`, from the beginning, outside any
/// group (nothing is committed); panics naming what failed.
pub fn reader_from_beginning(bootstrap: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.auto.commit", "false")
        .set("group.id", "test-reader-never-joins")
        .create()
        .expect("test reader");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    assert!(tpl.count() > 0, "{topic} has partitions");
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Reads every record of `topic` from the beginning until `count` arrived or `timeout` passed.
pub async fn read_topic(topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer = reader_from_beginning(&bootstrap(), topic);
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
