//! Reads the compacted subscriptions topic into the [`SubscriptionTable`] and keeps following it.
//!
//! The reader is group-less: it assigns every partition from the beginning, so each instance
//! holds the whole table. At start it captures each partition's end offset (high watermark); the
//! table becomes ready when every partition is complete, judged by position: the next offset to
//! read has reached the captured end, or the broker reported the partition's end (EOF). Offsets
//! removed by compaction, transaction markers and empty partitions therefore never hang the load.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{decode_record, Change, InvalidLatest, SubscriptionTable};
use crate::config::Config;
use crate::kafka;
use crate::metrics::{Metrics, SubscriptionOutcome};

/// Which partitions still have to reach the end offsets captured at start. Pure bookkeeping.
#[derive(Debug, Clone)]
pub struct LoadProgress {
    pending: BTreeMap<i32, i64>,
}

impl LoadProgress {
    /// `ends` holds (partition, low watermark, high watermark) captured at start.
    pub fn new(ends: impl IntoIterator<Item = (i32, i64, i64)>) -> Self {
        let pending = ends
            .into_iter()
            .filter(|(_, low, high)| high > low)
            .map(|(p, _, high)| (p, high))
            .collect();
        LoadProgress { pending }
    }

    /// A record at `offset` of `partition` was read: the position is `offset + 1`.
    pub fn record(&mut self, partition: i32, offset: i64) {
        if self
            .pending
            .get(&partition)
            .is_some_and(|end| offset + 1 >= *end)
        {
            self.pending.remove(&partition);
        }
    }

    /// The broker reported that `partition` has no more records right now.
    pub fn end_of_partition(&mut self, partition: i32) {
        self.pending.remove(&partition);
    }

    pub fn is_complete(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn pending(&self) -> BTreeSet<i32> {
        self.pending.keys().copied().collect()
    }
}

/// (partition, low watermark, high watermark).
type Watermarks = (i32, i64, i64);

/// Attempts (500 ms apart) at reading the topic's partitions and end offsets before giving up.
const STARTUP_RETRIES: u32 = 60;

/// Counts of one load, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadStats {
    pub records: u64,
    pub invalid: u64,
}

pub struct Loader {
    consumer: StreamConsumer<kafka::ReaderContext>,
    topic: String,
    table: Arc<SubscriptionTable>,
    metrics: Arc<Metrics>,
}

impl Loader {
    pub fn new(
        config: &Config,
        table: Arc<SubscriptionTable>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        Ok(Loader {
            consumer: kafka::reader(config, "subscriptions")?,
            topic: config.topics.subscriptions.clone(),
            table,
            metrics,
        })
    }

    /// Loads the table to the captured end offsets and marks it ready; then, when `follow`, keeps
    /// applying new records until `cancel` fires. Returns once loaded when not following.
    pub async fn run(self, cancel: CancellationToken, follow: bool) -> Result<LoadStats> {
        let started = Instant::now();
        // Right after topic creation or during a broker restart, metadata can briefly lack
        // leaders: retry for a while before failing with the last error.
        let mut tries = 0;
        let (ends, assignment) = loop {
            match self.capture_ends() {
                Ok(found) => break found,
                Err(e) if tries < STARTUP_RETRIES => {
                    tries += 1;
                    debug!(error = %format!("{e:#}"), tries, "subscriptions topic not ready yet");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(LoadStats::default()),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let parts = ends.len();
        let mut progress = LoadProgress::new(ends.iter().copied());
        info!(topic = %self.topic, partitions = parts, ?ends, "loading subscription table");
        self.consumer
            .assign(&assignment)
            .context("assigning the subscriptions topic")?;
        let mut stats = LoadStats::default();
        let mut loaded = false;
        loop {
            if progress.is_complete() && !loaded {
                loaded = true;
                let secs = started.elapsed().as_secs_f64();
                self.metrics.subscription_load_seconds.set(secs);
                self.metrics.subscriptions_loaded.set(1);
                self.table.set_ready();
                info!(
                    subscriptions = self.table.len(),
                    records = stats.records,
                    invalid = stats.invalid,
                    seconds = secs,
                    "subscription table loaded"
                );
                if !follow {
                    return Ok(stats);
                }
            }
            let msg = tokio::select! {
                _ = cancel.cancelled() => return Ok(stats),
                msg = self.consumer.recv() => msg,
            };
            match msg {
                Ok(m) => {
                    stats.records += 1;
                    if !self.apply(m.key(), m.payload(), m.partition(), m.offset()) {
                        stats.invalid += 1;
                    }
                    progress.record(m.partition(), m.offset());
                }
                Err(KafkaError::PartitionEOF(p)) => progress.end_of_partition(p),
                Err(e) => warn!(topic = %self.topic, error = %e, "subscriptions consumer error"),
            }
        }
    }

    /// Partitions with their (low, high) watermarks, and the from-the-beginning assignment.
    fn capture_ends(&self) -> Result<(Vec<Watermarks>, TopicPartitionList)> {
        let parts = kafka::partitions(self.consumer.client(), &self.topic)?;
        let mut ends = Vec::with_capacity(parts.len());
        let mut assignment = TopicPartitionList::new();
        for p in parts {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, kafka::METADATA_TIMEOUT)
                .with_context(|| format!("reading end offsets of {}[{p}]", self.topic))?;
            ends.push((p, low, high));
            assignment
                .add_partition_offset(&self.topic, p, Offset::Beginning)
                .context("building the subscriptions assignment")?;
        }
        Ok((ends, assignment))
    }

    /// Applies one record; false when it was invalid (logged and counted; a record whose key
    /// can be read suspends that subscription, see [`SubscriptionTable::suspend`]).
    fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>, partition: i32, offset: i64) -> bool {
        match decode_record(key, value) {
            Ok(change) => {
                let outcome = match &change {
                    Change::Put(s) => {
                        debug!(subscription = %s.id, partition, offset, "subscription put");
                        SubscriptionOutcome::Put
                    }
                    Change::Delete(id) => {
                        debug!(subscription = %id, partition, offset, "subscription deleted");
                        SubscriptionOutcome::Delete
                    }
                };
                self.table.apply(change);
                self.metrics.subscription_record(outcome);
                self.metrics.subscriptions.set(self.table.len() as i64);
                self.metrics
                    .subscriptions_invalid
                    .set(self.table.invalid_len() as i64);
                true
            }
            Err(e) => {
                let key = key.and_then(|k| std::str::from_utf8(k).ok());
                match key {
                    Some(key) => {
                        warn!(
                            topic = %self.topic, partition, offset, subscription = key,
                            reason = e.code, error = %e.message,
                            "invalid subscription record: the subscription is suspended until a \
                             valid record or a tombstone for it arrives"
                        );
                        self.table.suspend(
                            key,
                            InvalidLatest {
                                reason: e.code,
                                message: e.message.clone(),
                                partition,
                                offset,
                            },
                        );
                    }
                    None => warn!(
                        topic = %self.topic, partition, offset, reason = e.code,
                        error = %e.message, "invalid subscription record without a usable key ignored"
                    ),
                }
                self.metrics.subscriptions.set(self.table.len() as i64);
                self.metrics
                    .subscriptions_invalid
                    .set(self.table.invalid_len() as i64);
                self.metrics.invalid_subscription(e.code);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_partitions_are_complete_at_once() {
        let p = LoadProgress::new([(0, 0, 0), (1, 7, 7)]);
        assert!(p.is_complete());
    }

    #[test]
    fn completion_is_judged_by_position() {
        let mut p = LoadProgress::new([(0, 0, 10), (1, 5, 6), (2, 0, 0)]);
        assert_eq!(p.pending(), [0, 1].into());
        p.record(0, 3);
        p.record(1, 5);
        assert_eq!(p.pending(), [0].into());
        // Compaction removed offsets 4..=9 except 8: reading 8 is not the end yet...
        p.record(0, 8);
        assert!(!p.is_complete());
        // ...and the broker's end-of-partition settles it (offset 9 was a transaction marker).
        p.end_of_partition(0);
        assert!(p.is_complete());
    }

    #[test]
    fn records_past_the_captured_end_complete_a_partition() {
        let mut p = LoadProgress::new([(0, 0, 10)]);
        p.record(0, 12);
        assert!(p.is_complete());
    }
}
