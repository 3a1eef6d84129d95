//! The rebalance side of every concurrent group consumer of the processor (events, retry tiers,
//! replay): the rebalance listener, the consumer's [`OffsetTracker`], the count of records
//! whose work is running per partition, and the offset store of a released commit position. The
//! bounded set of records in flight is [`super::in_flight::InFlight`].
//!
//! # Revocations drain
//!
//! The group consumers use the cooperative-sticky assignor (`kafka::group_consumer`): a member
//! joining or leaving moves only the partitions that change owner, and the others keep flowing.
//! Before a revocation completes, the listener waits (up to `delivery.shutdown_deadline_secs`)
//! for the work already running on the revoked partitions to finish, then commits their released
//! positions synchronously: the next owner starts after what was delivered instead of
//! delivering it again. The wait blocks the consumer's poll, which is where librdkafka runs the
//! callback; it is done through `tokio::task::block_in_place`, so the running work keeps the
//! runtime's other workers. Records fetched but not started (a retry tier's held tasks) are not
//! waited for: the next owner reads them from the committed position.
//!
//! librdkafka keeps a partition's pause flag across revocation and reassignment, so the
//! listener resumes every newly assigned partition; the consumer loop then re-pauses what it
//! still has to wait for. Revocations are forwarded to the loop, which drops that partition's
//! held records and in-flight bookkeeping (late completions of revoked work are ignored by the
//! [`OffsetTracker`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
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
    tracker: Arc<OffsetTracker>,
    /// Records whose work is running, per (topic, partition).
    running: Mutex<HashMap<(Arc<str>, i32), usize>>,
    /// How long a revocation waits for the revoked partitions' running work.
    drain_deadline: Duration,
    /// Where librdkafka statistics report this consumer's lag.
    lag: Option<crate::metrics::ConsumerLag>,
    /// Where they report its requests.
    client_stats: Option<crate::metrics::KafkaClientStats>,
}

impl RebalanceContext {
    pub fn new(drain_deadline: Duration) -> (Self, UnboundedReceiver<RebalanceEvent>) {
        let (tx, rx) = unbounded_channel();
        let context = RebalanceContext {
            tx,
            tracker: Arc::new(OffsetTracker::new()),
            running: Mutex::new(HashMap::new()),
            drain_deadline,
            lag: None,
            client_stats: None,
        };
        (context, rx)
    }

    /// Reports this consumer's lag per assigned partition from librdkafka's statistics.
    pub fn with_lag(self, lag: crate::metrics::ConsumerLag) -> Self {
        RebalanceContext {
            lag: Some(lag),
            ..self
        }
    }

    /// Reports this consumer's requests per type from librdkafka's statistics.
    pub fn with_client_stats(self, stats: crate::metrics::KafkaClientStats) -> Self {
        RebalanceContext {
            client_stats: Some(stats),
            ..self
        }
    }

    /// The offset bookkeeping of this consumer.
    pub fn tracker(&self) -> &Arc<OffsetTracker> {
        &self.tracker
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, i32), usize>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Work for a record of `topic`/`partition` started.
    pub fn started(&self, topic: &Arc<str>, partition: i32) {
        *self
            .running()
            .entry((topic.clone(), partition))
            .or_default() += 1;
    }

    /// Work for a record of `topic`/`partition` ended (however it ended).
    pub fn ended(&self, topic: &Arc<str>, partition: i32) {
        let mut running = self.running();
        let key = (topic.clone(), partition);
        if let Some(n) = running.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                running.remove(&key);
            }
        }
    }

    fn running_on(&self, parts: &[(String, i32)]) -> usize {
        let running = self.running();
        parts
            .iter()
            .filter_map(|(topic, partition)| running.get(&(Arc::from(topic.as_str()), *partition)))
            .sum()
    }

    /// Waits until no work runs on `parts` or the deadline passed; returns what still runs.
    fn drain(&self, parts: &[(String, i32)]) -> usize {
        let deadline = Instant::now() + self.drain_deadline;
        let wait = || loop {
            let left = self.running_on(parts);
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match tokio::runtime::Handle::try_current() {
            // On a worker of the multi-threaded runtime: hand its other tasks to another thread.
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            // Anywhere else the running work could not progress while we wait.
            _ => self.running_on(parts),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for RebalanceContext {
    fn stats_raw(&self, statistics: &[u8]) {
        super::stats::report(statistics, self.lag.as_ref(), self.client_stats.as_ref());
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts = partitions_of(tpl);
        let started = Instant::now();
        let left = self.drain(&parts);
        let mut commit = TopicPartitionList::new();
        for (topic, partition) in &parts {
            if let Some(position) = self.tracker.committable(topic, *partition) {
                if let Err(e) =
                    commit.add_partition_offset(topic, *partition, Offset::Offset(position))
                {
                    warn!(%topic, partition, error = %e, "cannot list a position to commit");
                }
            }
        }
        if commit.count() > 0 {
            if let Err(e) = base.commit(&commit, CommitMode::Sync) {
                warn!(error = %e, "committing revoked partitions failed; their next owner re-reads from the last commit");
            }
        }
        info!(
            partitions = ?parts, drained_ms = started.elapsed().as_millis() as u64,
            still_running = left, "revoked partitions drained and committed"
        );
    }

    fn post_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = partitions_of;
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
