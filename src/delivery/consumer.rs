//! Pieces shared by every concurrent group consumer of the processor (events, retry tiers,
//! replay): the rebalance listener, the offset store of a released commit position, and the
//! bounded set of records in flight ([`InFlight`]).
//!
//! librdkafka keeps a partition's pause flag across revocation and reassignment, so the
//! listener resumes every newly assigned partition; the consumer loop then re-pauses what it
//! still has to wait for. Revocations are forwarded to the loop, which drops that partition's
//! held records and in-flight bookkeeping (late completions of revoked work are ignored by the
//! [`super::offsets::OffsetTracker`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::ClientContext;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::offsets::{Commit, OffsetTracker, Token};

/// A change of the consumer's assignment, as seen by the consumer loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

pub struct RebalanceContext {
    tx: UnboundedSender<RebalanceEvent>,
}

impl RebalanceContext {
    pub fn new() -> (Self, UnboundedReceiver<RebalanceEvent>) {
        let (tx, rx) = unbounded_channel();
        (RebalanceContext { tx }, rx)
    }
}

impl ClientContext for RebalanceContext {}

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

/// The records a consumer loop has handed to concurrent tasks: bounded in number, each released
/// for commit through the [`OffsetTracker`] when its work succeeded. The first error is kept and
/// cancels [`InFlight::failed`]; that record's offset is never released, so it is re-read.
pub struct InFlight {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    tracker: Arc<OffsetTracker>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    failure: CancellationToken,
    first_error: Arc<Mutex<Option<anyhow::Error>>>,
}

impl InFlight {
    pub fn new(consumer: Arc<StreamConsumer<RebalanceContext>>, limit: usize) -> Self {
        InFlight {
            consumer,
            tracker: Arc::new(OffsetTracker::new()),
            permits: Arc::new(Semaphore::new(limit)),
            tasks: TaskTracker::new(),
            failure: CancellationToken::new(),
            first_error: Arc::new(Mutex::new(None)),
        }
    }

    pub fn tracker(&self) -> &OffsetTracker {
        &self.tracker
    }

    /// Cancelled once some record's work failed.
    pub fn failed(&self) -> &CancellationToken {
        &self.failure
    }

    /// Waits for a free slot, then runs `work` for the record of `token` in its own task.
    pub async fn spawn(
        &self,
        token: Token,
        work: impl Future<Output = Result<()>> + Send + 'static,
    ) -> Result<()> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("in-flight limit closed")?;
        let tracker = self.tracker.clone();
        let consumer = self.consumer.clone();
        let failure = self.failure.clone();
        let first_error = self.first_error.clone();
        self.tasks.spawn(async move {
            match work.await {
                Ok(()) => {
                    if let Some(commit) = tracker.complete(token) {
                        store(&consumer, &commit);
                    }
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "record handling failed; stopping");
                    first_error
                        .lock()
                        .expect("error slot poisoned")
                        .get_or_insert(e);
                    failure.cancel();
                }
            }
            drop(permit);
        });
        Ok(())
    }

    /// Releases a record that needed no work (skipped as unusable after logging).
    pub fn complete_now(&self, token: Token) {
        if let Some(commit) = self.tracker.complete(token) {
            store(&self.consumer, &commit);
        }
    }

    /// Lets in-flight work finish within `deadline`, then returns the first error, if any.
    pub async fn finish(self, deadline: Duration) -> Result<()> {
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                in_flight = self.tracker.in_flight_total(),
                "shutdown deadline passed; unfinished records will be re-read after restart"
            );
        }
        match self.first_error.lock().expect("error slot poisoned").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
