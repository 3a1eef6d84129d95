//! Kafka plumbing, below everything that consumes or produces records:
//!
//! - this module: librdkafka client configuration for every role (the output producer,
//!   idempotent with `acks=all`; the processor's group consumers; the group-less readers; the
//!   admin client) and [`SourceRef`], the coordinates of an input record. Our defaults come
//!   first and `kafka.properties` are applied last, so operators can set SASL, SSL or any tuning
//!   property; an unknown property fails client creation naming it;
//! - [`consumer`]: the rebalance listener of the group consumers and the offset store;
//! - [`offsets`]: the per-partition contiguous-prefix offset tracker;
//! - [`in_flight`]: the bounded set of records being handled concurrently;
//! - [`produce`]: output records produced with every error classified, so none stops us;
//! - [`fetch`]: one record read again by its coordinates (task bodies stored by reference).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;

use crate::config::Config;

pub mod consumer;
pub mod fetch;
pub mod in_flight;
pub mod offsets;
pub mod produce;
pub mod stats;

/// Where an input record came from: in tasks, delivery-log records and the stable delivery id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (Unix ms), when it has one: with it the delivery id stays unique
    /// if the topic is deleted and created again (offsets restart at 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
}

/// Default timeout of metadata and watermark requests.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Bootstrap servers, `client.id`, then the operator's pass-through properties.
pub fn base(config: &Config, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("client.id", format!("{}-{role}", config.kafka.client_id));
    c
}

fn with_properties(mut c: ClientConfig, config: &Config) -> ClientConfig {
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// `queue.buffering.max.kbytes` of the producer: 64 MiB of records waiting for the broker.
pub const PRODUCER_QUEUE_KBYTES: &str = "65536";
/// `queue.buffering.max.messages` of the producer.
pub const PRODUCER_QUEUE_MESSAGES: &str = "100000";

/// The context of our producers: their librdkafka statistics feed
/// `webhooks_kafka_requests_total` and `webhooks_kafka_produce_batch_records` when they have a
/// [`crate::metrics::KafkaClientStats`].
pub struct OutputContext {
    stats: Option<crate::metrics::KafkaClientStats>,
}

impl rdkafka::ClientContext for OutputContext {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(stats) = &self.stats {
            stats::report(statistics, None, Some(stats));
        }
    }
}

/// The producer type of every output record.
pub type OutputProducer = FutureProducer<OutputContext>;

/// The producer of every output record: idempotent and `acks=all`, so an acknowledged record is
/// durable and retried sends never duplicate within a session.
pub fn producer(config: &Config) -> Result<OutputProducer> {
    producer_with(config, None)
}

/// [`producer`], reporting its requests and batch sizes from librdkafka's statistics.
pub fn observed_producer(
    config: &Config,
    stats: crate::metrics::KafkaClientStats,
) -> Result<OutputProducer> {
    producer_with(config, Some(stats))
}

fn producer_with(
    config: &Config,
    stats: Option<crate::metrics::KafkaClientStats>,
) -> Result<OutputProducer> {
    let mut c = base(config, "producer");
    if stats.is_some() {
        // Feeds the request and batch metrics; `kafka.properties` may override it.
        c.set("statistics.interval.ms", "5000");
    }
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // Our outputs are not on the webhook's path (the request is sent before its
        // delivery-log record is produced): waiting 20 ms for a batch costs only a later
        // commit. At 2,000 events/s, librdkafka's 5 ms made about 200 produce requests a
        // second of a few records each; 20 ms makes a quarter as many (docs/benchmarks.md,
        // issue 15).
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "120000")
        // The local queue is bounded (librdkafka's default is 1 GiB): during a broker outage
        // records wait in it, and a full queue makes sends wait (back-pressure on the input)
        // instead of growing memory. `kafka.properties` may change both.
        .set("queue.buffering.max.kbytes", PRODUCER_QUEUE_KBYTES)
        .set("queue.buffering.max.messages", PRODUCER_QUEUE_MESSAGES);
    create_with(
        with_properties(c, config),
        "producer",
        OutputContext { stats },
    )
}

/// A consumer in group `group`, starting at `offset_reset` when the group has no committed
/// offset. Offsets are stored by the application only after a record's outputs are
/// acknowledged (`enable.auto.offset.store=false`) and committed in the background from that
/// store.
pub fn group_consumer<C: rdkafka::consumer::ConsumerContext + 'static>(
    config: &Config,
    role: &str,
    group: &str,
    offset_reset: &str,
    context: C,
) -> Result<StreamConsumer<C>> {
    let mut c = base(config, role);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        // What was delivered since the last commit is delivered again after a crash: commit
        // often (librdkafka skips a commit when no stored offset moved).
        .set("auto.commit.interval.ms", "200")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", offset_reset)
        // A member joining or leaving moves only the partitions that change owner; the others
        // keep flowing (consumer::RebalanceContext drains what moves).
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "false")
        // librdkafka prefetches up to 64 MiB per consumer by default; the processor runs five
        // consumers, and records wait in memory as in-flight work anyway.
        .set("queued.max.messages.kbytes", "16384")
        // Feeds `webhooks_consumer_lag` (see `stats`); `kafka.properties` may override it.
        .set("statistics.interval.ms", "5000");
    create_with(with_properties(c, config), role, context)
}

/// The context of assignment readers: end-of-partition is how they learn a load is complete,
/// not an error worth a log line.
pub struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!(reason, "end of partition")
            }
            other => tracing::error!(error = %other, reason, "kafka client error"),
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// A group-less consumer that reads partitions by explicit assignment (the subscription table).
pub fn reader(config: &Config, role: &str) -> Result<StreamConsumer<ReaderContext>> {
    let mut c = base(config, role);
    c.set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let mut c = with_properties(c, config);
    // librdkafka refuses assign() without a group.id; the reader never subscribes or commits, so
    // this id never joins a group or stores an offset.
    c.set(
        "group.id",
        format!("{}.{role}-reader", config.kafka.group_id),
    );
    create_with(c, role, ReaderContext)
}

pub fn admin(config: &Config) -> Result<AdminClient<DefaultClientContext>> {
    create(with_properties(base(config, "admin"), config), "admin")
}

fn create<T: rdkafka::config::FromClientConfig>(c: ClientConfig, role: &str) -> Result<T> {
    c.create().map_err(|e| creation_error(e, role))
}

fn create_with<C, T>(c: ClientConfig, role: &str, context: C) -> Result<T>
where
    C: rdkafka::ClientContext,
    T: rdkafka::config::FromClientConfigAndContext<C>,
{
    c.create_with_context(context)
        .map_err(|e| creation_error(e, role))
}

fn creation_error(e: rdkafka::error::KafkaError, role: &str) -> anyhow::Error {
    anyhow!("{e}").context(format!(
        "creating the Kafka {role} client (check kafka.* settings)"
    ))
}

/// Partition ids of `topic`, failing with a clear message when it does not exist.
pub fn partitions<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<Vec<i32>> {
    let metadata = client.fetch_metadata(Some(topic), METADATA_TIMEOUT);
    let metadata =
        metadata.with_context(|| format!("fetching metadata of topic {topic:?} from Kafka"))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("topic {topic:?} is missing from the metadata"))?;
    if let Some(err) = t.error() {
        return Err(anyhow!(
            "topic {topic:?} is not available ({err:?}); create the topics with `mgpass-webhooks setup-topics`"
        ));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    if ids.is_empty() {
        return Err(anyhow!(
            "topic {topic:?} does not exist; create the topics with `mgpass-webhooks setup-topics`"
        ));
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Fails with a clear message when no broker answers within `timeout`.
pub fn check_reachable(config: &Config, timeout: Duration) -> Result<()> {
    let c: BaseConsumer = create(with_properties(base(config, "probe"), config), "probe")?;
    c.fetch_metadata(None, timeout)
        .map(|_| ())
        .with_context(|| {
            format!(
                "no Kafka broker answered at {} within {timeout:?}",
                config.kafka.bootstrap_servers
            )
        })
}

/// How often [`watch_reachable`] asks the cluster for metadata, and how long it waits.
pub const REACHABLE_PROBE_EVERY: Duration = Duration::from_secs(1);
pub const REACHABLE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Until `cancel` fires, asks the cluster for `topic`'s metadata every
/// [`REACHABLE_PROBE_EVERY`] through one long-lived client and sets `reachable` to whether it
/// answered within [`REACHABLE_PROBE_TIMEOUT`] (`/readyz` reports an outage from it). Logs each
/// change. Never fails on an outage: the consumers and the producer wait for the broker.
pub async fn watch_reachable(
    config: &Config,
    topic: &str,
    reachable: &std::sync::atomic::AtomicBool,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    let client: std::sync::Arc<BaseConsumer> = std::sync::Arc::new(create(
        with_properties(base(config, "probe"), config),
        "probe",
    )?);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(REACHABLE_PROBE_EVERY) => {}
        }
        let probe = client.clone();
        let topic = topic.to_string();
        let answered = tokio::task::spawn_blocking(move || {
            probe
                .fetch_metadata(Some(&topic), REACHABLE_PROBE_TIMEOUT)
                .map(|_| ())
        })
        .await
        .context("the Kafka probe thread")?;
        let was = reachable.swap(answered.is_ok(), Ordering::Relaxed);
        match (was, answered) {
            (true, Err(e)) => tracing::warn!(
                error = %e, servers = %config.kafka.bootstrap_servers,
                "Kafka unreachable; not ready until it answers (consumers and producer wait)"
            ),
            (false, Ok(())) => tracing::info!("Kafka reachable again; ready"),
            _ => {}
        }
    }
}
