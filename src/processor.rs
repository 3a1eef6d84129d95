//! The event consume loop: read `rewards.events` in the consumer group, decode, match against the
//! subscription table and hand each (event, matching subscriptions) to a [`Dispatcher`];
//! undecodable records go to the invalid topic with the reason. Concurrency and commits are the
//! [`crate::kafka`] plumbing's ([`InFlight`]).
//!
//! Guarantees: no event is matched before the subscription table is fully loaded; a record's
//! offset is stored for commit only after its outputs are acknowledged by Kafka (the invalid
//! record, or whatever the dispatcher produces), so a crash replays it rather than losing it;
//! bad input never stops the loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin_server::Health;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::events::{InvalidEvent, RewardsEvent};
use crate::kafka::consumer::{revoke, RebalanceContext, RebalanceEvent};
use crate::kafka::in_flight::InFlight;
use crate::kafka::{self, SourceRef};
use crate::metrics::Metrics;
use crate::subscriptions::SubscriptionTable;

/// Header naming why a record went to the invalid topic (a reason code).
pub const HEADER_INVALID_REASON: &str = "mgpass-invalid-reason";
/// Header with the human-readable error.
pub const HEADER_INVALID_ERROR: &str = "mgpass-invalid-error";
pub const HEADER_SOURCE_TOPIC: &str = "mgpass-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "mgpass-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "mgpass-source-offset";

/// Event records being handled at once (decode, match, deliveries), per processor.
pub const MAX_OUTSTANDING_RECORDS: usize = 4096;

pub struct Processor<D> {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    rebalances: std::sync::Mutex<Option<UnboundedReceiver<RebalanceEvent>>>,
    producer: FutureProducer,
    config: Config,
    table: Arc<SubscriptionTable>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    dispatcher: Arc<D>,
}

impl<D: Dispatcher> Processor<D> {
    pub fn new(
        config: &Config,
        producer: FutureProducer,
        table: Arc<SubscriptionTable>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        dispatcher: Arc<D>,
    ) -> Result<Self> {
        let (context, rebalances) = RebalanceContext::new();
        Ok(Processor {
            consumer: Arc::new(kafka::group_consumer(
                config,
                "events",
                &config.kafka.group_id,
                context,
            )?),
            rebalances: std::sync::Mutex::new(Some(rebalances)),
            producer,
            config: config.clone(),
            table,
            metrics,
            health,
            dispatcher,
        })
    }

    /// Runs until `cancel` fires; then stops fetching, lets in-flight records finish within
    /// `delivery.shutdown_deadline_secs`, and commits what completed.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<()> {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = self.table.wait_ready() => {}
        }
        let topic = self.config.topics.events.clone();
        if let Err(e) = kafka::partitions(self.consumer.client(), &topic) {
            warn!(error = %format!("{e:#}"), "events topic not available yet; waiting for it");
        }
        self.consumer
            .subscribe(&[&topic])
            .with_context(|| format!("subscribing to {topic:?}"))?;
        self.health.consuming.store(true, Ordering::Relaxed);
        info!(%topic, group = %self.config.kafka.group_id, "consuming events");
        let result = self.consume(&cancel).await;
        self.health.consuming.store(false, Ordering::Relaxed);
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored since the last commit is reported as an error by librdkafka.
            debug!(error = %e, "final commit");
        }
        result
    }

    async fn consume(self: &Arc<Self>, cancel: &CancellationToken) -> Result<()> {
        let mut rebalances = self
            .rebalances
            .lock()
            .expect("rebalance receiver lock")
            .take()
            .context("the processor runs once")?;
        let in_flight = InFlight::new(self.consumer.clone(), MAX_OUTSTANDING_RECORDS);
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = in_flight.failed().cancelled() => break,
                Some(ev) = rebalances.recv() => {
                    revoke(in_flight.tracker(), ev);
                    continue;
                }
                msg = self.consumer.recv() => msg,
            };
            let m = match msg {
                Ok(m) => m.detach(),
                Err(e) => {
                    warn!(error = %e, "events consumer error");
                    continue;
                }
            };
            // Apply assignment changes that happened during that poll before tracking.
            while let Ok(ev) = rebalances.try_recv() {
                revoke(in_flight.tracker(), ev);
            }
            let token = in_flight
                .tracker()
                .begin(m.topic(), m.partition(), m.offset());
            let this = self.clone();
            in_flight
                .spawn(token, async move { this.handle(&m).await })
                .await?;
        }
        let deadline = std::time::Duration::from_secs(self.config.delivery.shutdown_deadline_secs);
        in_flight.finish(deadline).await
    }

    async fn handle(&self, m: &OwnedMessage) -> Result<()> {
        let source = SourceRef {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let event = match RewardsEvent::decode(m.payload()) {
            Ok(e) => e,
            Err(invalid) => return self.dead_letter(m, &source, &invalid).await,
        };
        let inexact: usize = event.data.values().map(crate::body::inexact_numbers).sum();
        if inexact > 0 {
            self.metrics.inexact_numbers.inc_by(inexact as u64);
            warn!(
                partition = source.partition,
                offset = source.offset,
                numbers = inexact,
                "event carries integers beyond 2^53; sent as JavaScript reads them"
            );
        }
        let subs = self
            .table
            .matching(&event.event_type, event.client_id.as_deref());
        let outcome = if subs.is_empty() {
            "unmatched"
        } else {
            "matched"
        };
        self.metrics.events.with_label_values(&[outcome]).inc();
        self.metrics.matches.inc_by(subs.len() as u64);
        debug!(
            partition = source.partition, offset = source.offset,
            event_type = %event.event_type, matches = subs.len(), "event matched"
        );
        self.dispatcher
            .dispatch_event(source, Arc::new(event), subs)
            .await
    }

    /// Sends the original record to the invalid topic with the reason and source coordinates.
    async fn dead_letter(
        &self,
        m: &OwnedMessage,
        source: &SourceRef,
        invalid: &InvalidEvent,
    ) -> Result<()> {
        warn!(
            partition = source.partition, offset = source.offset, reason = invalid.code,
            error = %invalid.message, "undecodable event sent to the invalid topic"
        );
        self.metrics.events.with_label_values(&["invalid"]).inc();
        self.metrics
            .invalid_events
            .with_label_values(&[invalid.code])
            .inc();
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = m.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        headers = headers
            .insert(Header {
                key: HEADER_INVALID_REASON,
                value: Some(invalid.code),
            })
            .insert(Header {
                key: HEADER_INVALID_ERROR,
                value: Some(&invalid.message),
            })
            .insert(Header {
                key: HEADER_SOURCE_TOPIC,
                value: Some(&source.topic),
            })
            .insert(Header {
                key: HEADER_SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: HEADER_SOURCE_OFFSET,
                value: Some(&offset),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.config.topics.invalid).headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        self.producer
            .send(record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)
            .with_context(|| {
                format!(
                    "producing to the invalid topic {:?}",
                    self.config.topics.invalid
                )
            })?;
        Ok(())
    }
}
