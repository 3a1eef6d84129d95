//! The rebalance side of every concurrent group consumer of the processor (events, retry tiers,
//! replay): the rebalance listener and the offset store of a released commit position. The
//! bounded set of records in flight is [`super::in_flight::InFlight`].
//!
//! librdkafka keeps a partition's pause flag across revocation and reassignment, so the
//! listener resumes every newly assigned partition; the consumer loop then re-pauses what it
//! still has to wait for. Revocations are forwarded to the loop, which drops that partition's
//! held records and in-flight bookkeeping (late completions of revoked work are ignored by the
//! [`super::offsets::OffsetTracker`]).

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::ClientContext;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{info, warn};

use super::offsets::{Commit, OffsetTracker};

/// A change of the consumer's assignment, as seen by the consumer loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

pub struct RebalanceContext {
    tx: UnboundedSender<RebalanceEvent>,
    /// Where librdkafka statistics report this consumer's lag.
    lag: Option<crate::metrics::ConsumerLag>,
}

impl RebalanceContext {
    pub fn new() -> (Self, UnboundedReceiver<RebalanceEvent>) {
        let (tx, rx) = unbounded_channel();
        (RebalanceContext { tx, lag: None }, rx)
    }

    /// Reports this consumer's lag per assigned partition from librdkafka's statistics.
    pub fn with_lag(self, lag: crate::metrics::ConsumerLag) -> Self {
        RebalanceContext {
            lag: Some(lag),
            ..self
        }
    }
}

impl ClientContext for RebalanceContext {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(lag) = &self.lag {
            super::stats::report(statistics, lag);
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn post_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &rdkafka::TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect::<Vec<_>>()
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                if let Err(e) = base.resume(tpl) {
                    warn!(error = %e, "resuming newly assigned partitions");
                }
                info!(partitions = ?parts(tpl), "partitions assigned");
                let _ = self.tx.send(RebalanceEvent::Assigned(parts(tpl)));
            }
            Rebalance::Revoke(tpl) => {
                info!(partitions = ?parts(tpl), "partitions revoked");
                let _ = self.tx.send(RebalanceEvent::Revoked(parts(tpl)));
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// Drops the bookkeeping of revoked partitions (late completions of their work are ignored).
pub fn revoke(tracker: &OffsetTracker, ev: RebalanceEvent) {
    if let RebalanceEvent::Revoked(parts) = ev {
        for (topic, partition) in parts {
            tracker.revoke(&topic, partition);
        }
    }
}

/// Stores a released commit position for the next (auto-)commit. librdkafka's per-partition
/// store takes the last processed offset and commits it + 1, while [`Commit::offset`] is already
/// the position to commit.
pub fn store(consumer: &StreamConsumer<RebalanceContext>, commit: &Commit) {
    if let Err(e) = consumer.store_offset(&commit.topic, commit.partition, commit.offset - 1) {
        // A partition revoked meanwhile refuses the store: its new owner re-reads the records.
        warn!(topic = %commit.topic, partition = commit.partition, error = %e, "offset not stored");
    }
}
