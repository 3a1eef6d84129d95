//! The event consume loop: read `rewards.events` in the consumer group, decode, match against the
//! subscription table and hand each (event, matching subscriptions) to a [`Dispatcher`];
//! undecodable records go to the invalid topic with the reason. Concurrency and commits are the
//! [`crate::kafka`] plumbing's ([`InFlight`]).
//!
//! Guarantees: no event is matched before the subscription table is fully loaded; a record's
//! offset is stored for commit only after its outputs are acknowledged by Kafka (the invalid
//! record, or whatever the dispatcher produces), so a crash replays it rather than losing it;
//! bad input never stops the loop. Events are JSON or Confluent-framed Avro, mixed on one topic
//! ([`EventDecoder`]); a schema registry that cannot answer is not bad input: the record waits
//! for it (its offset held, nothing sent to the invalid topic) while the others go on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin_server::Health;
use crate::avro::EventDecoder;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::events::InvalidEvent;
use crate::kafka::consumer::{revoke, RebalanceContext, RebalanceEvent};
use crate::kafka::in_flight::InFlight;
use crate::kafka::produce::{max_message_bytes, produce, Output, RECORD_OVERHEAD_BYTES};
use crate::kafka::{self, OutputProducer, SourceRef};
use crate::metrics::{EventOutcome, Metrics};
use crate::subscriptions::SubscriptionTable;

/// Header naming why a record went to the invalid topic (a reason code).
pub const HEADER_INVALID_REASON: &str = "mgpass-invalid-reason";
/// Header with the human-readable error.
pub const HEADER_INVALID_ERROR: &str = "mgpass-invalid-error";
pub const HEADER_SOURCE_TOPIC: &str = "mgpass-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "mgpass-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "mgpass-source-offset";
/// Set when the invalid copy's value was cut to fit the producer's limit: the original length.
pub const HEADER_INVALID_TRUNCATED: &str = "mgpass-invalid-truncated";
/// Set when the invalid copy's key was cut to fit: the original key length.
pub const HEADER_INVALID_KEY_TRUNCATED: &str = "mgpass-invalid-key-truncated";

/// Event records being handled at once (decode, match, deliveries), per processor.
pub const MAX_OUTSTANDING_RECORDS: usize = 4096;

pub struct Processor<D> {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    rebalances: std::sync::Mutex<Option<UnboundedReceiver<RebalanceEvent>>>,
    producer: OutputProducer,
    config: Config,
    table: Arc<SubscriptionTable>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    dispatcher: Arc<D>,
    /// The producer's limit for one record.
    max_record_bytes: usize,
    /// `delivery.max_pending_deliveries`: a matched event holds one permit per delivery
    /// (at most all of them) until its deliveries are done.
    pending: Arc<tokio::sync::Semaphore>,
    /// Held while one event matches and waits for its share of `pending`.
    budget_turn: tokio::sync::Mutex<()>,
    /// JSON and Avro events, Avro schemas from the registry.
    decoder: EventDecoder,
}

/// Debug builds only (tests; release builds have no such hook): an event whose type equals the
/// environment variable `MGPASS_DEBUG_PANIC_ON_EVENT_TYPE` makes its record handling panic, a
/// bug injected into the real binary.
#[cfg(debug_assertions)]
fn panic_if_injected(event_type: &str) {
    static TYPE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let injected = TYPE.get_or_init(|| std::env::var("MGPASS_DEBUG_PANIC_ON_EVENT_TYPE").ok());
    if injected.as_deref() == Some(event_type) {
        panic!("injected panic (MGPASS_DEBUG_PANIC_ON_EVENT_TYPE={event_type})");
    }
}

/// An event's share of `delivery.max_pending_deliveries`, returned (and un-counted) on drop.
struct PendingGuard<'a> {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: &'a Metrics,
    n: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.metrics.pending_deliveries.sub(i64::from(self.n));
    }
}

impl<D: Dispatcher> Processor<D> {
    pub fn new(
        config: &Config,
        producer: OutputProducer,
        table: Arc<SubscriptionTable>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        dispatcher: Arc<D>,
    ) -> Result<Self> {
        let (context, rebalances) =
            RebalanceContext::new(Duration::from_secs(config.delivery.shutdown_deadline_secs));
        let context = context
            .with_lag(metrics.consumer_lag())
            .with_client_stats(metrics.kafka_client("events"));
        Ok(Processor {
            consumer: Arc::new(kafka::group_consumer(
                config,
                "events",
                &config.kafka.group_id,
                &config.kafka.events_offset_reset,
                context,
            )?),
            rebalances: std::sync::Mutex::new(Some(rebalances)),
            producer,
            config: config.clone(),
            table,
            metrics,
            health,
            dispatcher,
            max_record_bytes: max_message_bytes(config),
            pending: Arc::new(tokio::sync::Semaphore::new(
                config.delivery.max_pending_deliveries,
            )),
            budget_turn: tokio::sync::Mutex::new(()),
            decoder: EventDecoder::new(&config.registry)?,
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
            // A slot first, so a full budget still sees cancellation and revocations.
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = in_flight.failed().cancelled() => break,
                Some(ev) = rebalances.recv() => {
                    revoke(in_flight.tracker(), ev);
                    continue;
                }
                permit = in_flight.permit() => permit?,
            };
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
            in_flight.spawn(permit, token, async move { this.handle(&m).await });
        }
        let deadline = Duration::from_secs(self.config.delivery.shutdown_deadline_secs);
        in_flight.finish(deadline).await
    }

    fn matching(
        &self,
        event: &crate::events::RewardsEvent,
    ) -> Vec<Arc<crate::subscriptions::Subscription>> {
        self.table
            .matching(&event.event_type, event.client_id.as_deref())
    }

    async fn handle(&self, m: &OwnedMessage) -> Result<()> {
        let source = SourceRef {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
        };
        let size = m.payload().map_or(0, <[u8]>::len);
        let decoded = if size > self.config.delivery.max_event_bytes {
            Err(InvalidEvent::too_large(
                size,
                self.config.delivery.max_event_bytes,
            ))
        } else {
            // A registry outage is waited out here, holding this record's offset.
            self.decoder
                .decode_waiting(m.payload(), &self.metrics)
                .await
        };
        let event = match decoded {
            Ok(e) => e,
            Err(invalid) => return self.dead_letter(m, &source, &invalid).await,
        };
        #[cfg(debug_assertions)]
        panic_if_injected(&event.event_type);
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
        // Memory is bounded in deliveries, not only in records: an event's matched
        // subscriptions are taken only when its deliveries fit in the budget. One event at a
        // time matches and waits for its share (in order); the others wait before matching,
        // holding nothing but their decoded event — 4,096 records each matching 20,000
        // subscriptions would otherwise hold 4,096 lists of 20,000 while they wait. An event
        // that matches more than the whole budget takes all of it.
        let mut subs = self.matching(&event);
        let max = self.config.delivery.max_pending_deliveries;
        let mut wanted = subs.len().min(max) as u32;
        // Usually the budget has room: take it at once, no lock. Otherwise give the list back
        // and wait in turn, so a waiting event holds no list of matches (4,096 records each
        // matching 20,000 subscriptions would hold 4,096 such lists); the one whose turn it is
        // matches again (the table may have changed) and waits for its share, in order.
        let permit = match self.pending.clone().try_acquire_many_owned(wanted) {
            Ok(p) => p,
            Err(_) => {
                drop(subs);
                let _turn = self.budget_turn.lock().await;
                subs = self.matching(&event);
                wanted = subs.len().min(max) as u32;
                self.pending
                    .clone()
                    .acquire_many_owned(wanted)
                    .await
                    .context("the delivery budget closed")?
            }
        };
        self.metrics.pending_deliveries.add(i64::from(wanted));
        let _budget = PendingGuard {
            _permit: permit,
            metrics: &self.metrics,
            n: wanted,
        };
        let outcome = if subs.is_empty() {
            EventOutcome::Unmatched
        } else {
            EventOutcome::Matched
        };
        self.metrics.event(outcome);
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
        self.metrics.invalid_event(invalid.code);
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        let mut headers: Vec<(&str, Option<Vec<u8>>)> = m
            .headers()
            .map(|original| {
                original
                    .iter()
                    .map(|h| (h.key, h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        for (key, value) in [
            (HEADER_INVALID_REASON, invalid.code),
            (HEADER_INVALID_ERROR, invalid.message.as_str()),
            (HEADER_SOURCE_TOPIC, source.topic.as_str()),
            (HEADER_SOURCE_PARTITION, partition.as_str()),
            (HEADER_SOURCE_OFFSET, offset.as_str()),
        ] {
            headers.push((key, Some(value.as_bytes().to_vec())));
        }
        // The copy must fit the producer's limit whatever came in: cut the key and the value
        // (and say so in a header) rather than fail to record the input.
        let headers_len: usize = headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum();
        let budget = self
            .max_record_bytes
            .saturating_sub(headers_len + RECORD_OVERHEAD_BYTES);
        let key = m.key().map(|k| truncated(k, budget / 2));
        if let Some((_, Some(len))) = &key {
            headers.push((
                HEADER_INVALID_KEY_TRUNCATED,
                Some(len.to_string().into_bytes()),
            ));
        }
        let key = key.map(|(k, _)| k);
        let room = budget.saturating_sub(key.as_ref().map_or(0, Vec::len));
        let value = m.payload().map(|v| truncated(v, room));
        if let Some((_, Some(len))) = &value {
            headers.push((HEADER_INVALID_TRUNCATED, Some(len.to_string().into_bytes())));
        }
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: value.as_deref(),
            })
        });
        let output = Output {
            topic: self.config.topics.invalid.clone(),
            key,
            value: value.map(|(v, _)| v),
            headers: Some(headers),
        };
        produce(&self.producer, &output, &self.metrics).await?;
        Ok(())
    }
}

/// `bytes` cut to at most `max` bytes, with the original length when it was cut.
fn truncated(bytes: &[u8], max: usize) -> (Vec<u8>, Option<usize>) {
    if bytes.len() <= max {
        (bytes.to_vec(), None)
    } else {
        (bytes[..max].to_vec(), Some(bytes.len()))
    }
}
