//! The retry-tier and replay consumers: read delivery tasks, hold each until its due time, then
//! hand it to the [`Engine`] with many attempts in flight.
//!
//! Guarantees: a task is never attempted before `due_at_ms`. Only a partition whose head is not
//! yet due is paused; the loop keeps polling while partitions are paused (so it never exceeds
//! `max.poll.interval.ms`), and other partitions, tiers and fresh events flow on. Records fetched
//! before a pause took effect are held in order, not dropped. A task's offset is released for
//! commit only when the engine has its outputs acknowledged, through the contiguous-prefix
//! [`OffsetTracker`]. A record that is not a delivery task is logged, counted and skipped.
//! A task read from the replay topic starts a fresh budget (attempt 1, due now) whatever
//! `attempt` it carries; its retries then go through the tiers like any other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::consumer::{InFlight, RebalanceContext, RebalanceEvent};
use super::engine::Engine;
use super::offsets::{OffsetTracker, Token};
use super::{now_ms, DeliveryTask};
use crate::config::Config;
use crate::kafka;

/// Tasks being attempted at once per task consumer.
pub const MAX_OUTSTANDING_TASKS: usize = 4096;

pub struct TaskConsumer {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    rebalances: tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
    topic: String,
    engine: Arc<Engine>,
    shutdown_deadline: Duration,
    /// Whether this is the replay topic's consumer: its tasks start a fresh attempt budget.
    fresh_budget: bool,
    /// Partitions this consumer paused. Pause and resume are called on changes only: each
    /// call is a librdkafka operation that also discards the partition's prefetched records
    /// (to be fetched again), so repeating them per polled record cost CPU and broker fetches.
    paused: HashSet<i32>,
}

struct Held {
    token: Token,
    task: DeliveryTask,
}

impl TaskConsumer {
    /// A consumer of `topic` (a retry tier or the replay topic) in group `<kafka.group_id>.<topic>`.
    pub fn new(config: &Config, topic: &str, engine: Arc<Engine>) -> Result<Self> {
        let (context, rebalances) = RebalanceContext::new();
        // A group of its own per task topic: a tier consumer joining or leaving never
        // rebalances (and so never interrupts) the event consumer or the other tiers.
        let group = format!("{}.{topic}", config.kafka.group_id);
        let consumer = kafka::group_consumer(config, &format!("tasks-{topic}"), &group, context)?;
        Ok(TaskConsumer {
            consumer: Arc::new(consumer),
            rebalances,
            topic: topic.to_string(),
            fresh_budget: topic == config.topics.replay,
            engine,
            shutdown_deadline: Duration::from_secs(config.delivery.shutdown_deadline_secs),
            paused: HashSet::new(),
        })
    }

    pub async fn run(mut self, cancel: CancellationToken) -> Result<()> {
        self.consumer
            .subscribe(&[&self.topic])
            .with_context(|| format!("subscribing to {:?}", self.topic))?;
        info!(topic = %self.topic, "consuming delivery tasks");
        let in_flight = InFlight::new(self.consumer.clone(), MAX_OUTSTANDING_TASKS);
        let mut held: HashMap<i32, VecDeque<Held>> = HashMap::new();
        // Received records borrow the consumer; a handle of our own leaves `self` free.
        let consumer = self.consumer.clone();
        loop {
            let next_due = held
                .values()
                .filter_map(|q| q.front())
                .map(|h| h.task.due_at_ms)
                .min();
            let wait = next_due.map_or(Duration::from_secs(3600), |due| {
                Duration::from_millis((due - now_ms()).max(0) as u64)
            });
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = in_flight.failed().cancelled() => break,
                Some(ev) = self.rebalances.recv() => self.on_rebalance(in_flight.tracker(), ev, &mut held),
                _ = tokio::time::sleep(wait), if next_due.is_some() => {}
                msg = consumer.recv() => {
                    while let Ok(ev) = self.rebalances.try_recv() {
                        self.on_rebalance(in_flight.tracker(), ev, &mut held);
                    }
                    match msg {
                        Ok(m) => {
                            let token = in_flight.tracker().begin(m.topic(), m.partition(), m.offset());
                            match m.payload().map(serde_json::from_slice::<DeliveryTask>) {
                                Some(Ok(task)) => {
                                    let task = if self.fresh_budget {
                                        task.with_fresh_budget(now_ms())
                                    } else {
                                        task
                                    };
                                    let queue = held.entry(m.partition()).or_default();
                                    if queue.is_empty() && task.due_at_ms > now_ms() {
                                        self.pause(m.partition());
                                    }
                                    queue.push_back(Held { token, task });
                                }
                                other => {
                                    let reason = match other {
                                        Some(Err(e)) => e.to_string(),
                                        _ => "empty value".to_string(),
                                    };
                                    warn!(
                                        topic = %self.topic, partition = m.partition(),
                                        offset = m.offset(), error = %reason,
                                        "record is not a delivery task; skipped"
                                    );
                                    in_flight.complete_now(token);
                                }
                            }
                        }
                        Err(e) => warn!(topic = %self.topic, error = %e, "task consumer error"),
                    }
                }
            }
            // Start every task that is due, in partition order; resume drained partitions.
            let now = now_ms();
            for (partition, queue) in held.iter_mut() {
                while queue.front().is_some_and(|h| h.task.due_at_ms <= now) {
                    let h = queue.pop_front().expect("front exists");
                    let engine = self.engine.clone();
                    in_flight
                        .spawn(h.token, async move { engine.attempt(h.task).await })
                        .await?;
                }
                if queue.is_empty() {
                    self.resume(*partition);
                } else {
                    self.pause(*partition);
                }
            }
            held.retain(|_, q| !q.is_empty());
        }
        let result = in_flight.finish(self.shutdown_deadline).await;
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(error = %e, "final commit");
        }
        result
    }

    fn on_rebalance(
        &mut self,
        tracker: &OffsetTracker,
        ev: RebalanceEvent,
        held: &mut HashMap<i32, VecDeque<Held>>,
    ) {
        match ev {
            RebalanceEvent::Revoked(parts) => {
                for (topic, partition) in parts {
                    // Held tasks are re-read by the partition's next owner.
                    held.remove(&partition);
                    self.paused.remove(&partition);
                    tracker.revoke(&topic, partition);
                }
            }
            RebalanceEvent::Assigned(parts) => {
                // The listener resumed them; re-pause those we still hold due-later tasks for.
                for (_, partition) in parts {
                    self.paused.remove(&partition);
                    if held.get(&partition).is_some_and(|q| !q.is_empty()) {
                        self.pause(partition);
                    }
                }
            }
        }
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        tpl
    }

    fn pause(&mut self, partition: i32) {
        if !self.paused.insert(partition) {
            return;
        }
        if let Err(e) = self.consumer.pause(&self.partition_list(partition)) {
            warn!(topic = %self.topic, partition, error = %e, "pause failed");
        }
    }

    fn resume(&mut self, partition: i32) {
        if !self.paused.remove(&partition) {
            return;
        }
        if let Err(e) = self.consumer.resume(&self.partition_list(partition)) {
            warn!(topic = %self.topic, partition, error = %e, "resume failed");
        }
    }
}
