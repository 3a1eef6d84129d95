//! Bounded, group-less reading of a topic for the operator tools: every partition from the
//! beginning, or from the first offset at or after a time (Kafka's offsets-for-times), up to the
//! end offsets captured when the read starts. Records produced meanwhile are not read, so the
//! tools always stop. The reader never joins a consumer group and never commits, so it cannot
//! disturb the processor. When nothing arrives for [`IDLE_TIMEOUT`] while partitions are still
//! short of their end, it fails naming them instead of waiting forever.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::config::Config;
use crate::kafka;
use crate::subscriptions::loader::LoadProgress;

/// How long a read waits for the next record before it gives up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one bounded read covered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadStats {
    /// Records handed to the callback.
    pub records: u64,
    pub partitions: usize,
    /// partition → (first offset read, end offset captured at start).
    pub ranges: BTreeMap<i32, (i64, i64)>,
}

/// The first offset to read of a partition whose watermarks are `low..high`, given the answer of
/// offsets-for-times (`None` when no time was asked): a time past every record means `high`
/// (nothing to read), an offset below `low` (deleted by retention) means `low`.
pub fn start_offset(low: i64, high: i64, for_time: Option<Offset>) -> i64 {
    match for_time {
        None => low,
        Some(Offset::Offset(o)) => o.clamp(low, high),
        Some(Offset::End) => high,
        Some(_) => low,
    }
}

/// Reads `topic` as described in the module doc, calling `each` for every record.
pub async fn read_bounded(
    config: &Config,
    role: &str,
    topic: &str,
    since_ms: Option<i64>,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<ReadStats> {
    let consumer = kafka::reader(config, role)?;
    let parts = kafka::partitions(consumer.client(), topic)?;
    let from_time = match since_ms {
        None => BTreeMap::new(),
        Some(ms) => {
            let mut q = TopicPartitionList::new();
            for &p in &parts {
                q.add_partition_offset(topic, p, Offset::Offset(ms))
                    .context("building the offsets-for-times request")?;
            }
            let answer = consumer
                .offsets_for_times(q, kafka::METADATA_TIMEOUT)
                .with_context(|| format!("asking Kafka for the offsets of {topic:?} at a time"))?;
            answer
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect()
        }
    };
    let mut stats = ReadStats {
        partitions: parts.len(),
        ..ReadStats::default()
    };
    let mut assignment = TopicPartitionList::new();
    let mut bounds = Vec::new();
    for &p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, kafka::METADATA_TIMEOUT)
            .with_context(|| format!("reading end offsets of {topic}[{p}]"))?;
        let start = start_offset(
            low,
            high,
            since_ms.map(|_| from_time.get(&p).copied().unwrap_or(Offset::End)),
        );
        stats.ranges.insert(p, (start, high));
        bounds.push((p, start, high));
        if start < high {
            assignment
                .add_partition_offset(topic, p, Offset::Offset(start))
                .context("building the assignment")?;
        }
    }
    debug!(topic, ranges = ?stats.ranges, "bounded read");
    let mut progress = LoadProgress::new(bounds);
    if progress.is_complete() {
        return Ok(stats);
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning the partitions of {topic:?}"))?;
    while !progress.is_complete() {
        let msg = match tokio::time::timeout(IDLE_TIMEOUT, consumer.recv()).await {
            Ok(m) => m,
            Err(_) => {
                return Err(anyhow!(
                    "reading {topic:?}: nothing arrived for {}s while partitions {:?} were short \
                     of the end offsets captured at start",
                    IDLE_TIMEOUT.as_secs(),
                    progress.pending()
                ))
            }
        };
        match msg {
            Ok(m) => {
                let end = stats.ranges.get(&m.partition()).map_or(0, |r| r.1);
                if m.offset() < end {
                    stats.records += 1;
                    each(&m);
                }
                progress.record(m.partition(), m.offset());
            }
            Err(KafkaError::PartitionEOF(p)) => progress.end_of_partition(p),
            Err(e) => warn!(topic, error = %e, "reader error (retrying)"),
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_offsets() {
        let cases = [
            (None, 3, "from the beginning: the low watermark"),
            (Some(Offset::Offset(5)), 5, "the offset for the time"),
            (Some(Offset::Offset(1)), 3, "below low (deleted): low"),
            (Some(Offset::Offset(20)), 10, "past the end: the end"),
            (Some(Offset::End), 10, "no record at or after the time"),
            (Some(Offset::Beginning), 3, "anything else: low"),
        ];
        for (answer, expected, name) in cases {
            assert_eq!(start_offset(3, 10, answer), expected, "{name}");
        }
    }
}
