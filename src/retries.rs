//! The retry-tier and replay consume loops: read delivery tasks, hold each until its due time,
//! then hand it to the [`Dispatcher`] with many attempts in flight.
//!
//! Guarantees: a task is never attempted before `due_at_ms`. Only a partition whose head is not
//! yet due is paused; the loop keeps polling while partitions are paused (so it never exceeds
//! `max.poll.interval.ms`), and other partitions, tiers and fresh events flow on. Records fetched
//! before a pause took effect are held in order, not dropped. A task's offset is released for
//! commit only when the dispatcher has its outputs acknowledged, through the contiguous-prefix
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

use crate::config::Config;
use crate::delivery::{now_ms, DeliveryTask, Tier, MAX_ATTEMPTS};
use crate::dispatch::Dispatcher;
use crate::kafka;
use crate::kafka::consumer::{RebalanceContext, RebalanceEvent};
use crate::kafka::in_flight::{InFlight, Permit};
use crate::kafka::offsets::{OffsetTracker, Token};
use crate::metrics::{Metrics, TaskRecordProblem, TaskSource};

/// Tasks being attempted at once per task consumer.
pub const MAX_OUTSTANDING_TASKS: usize = 4096;

pub struct TaskConsumer<D> {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    rebalances: tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
    topic: String,
    /// How far ahead of now a task of this topic may be due ([`sanitise`]).
    max_ahead_ms: i64,
    dispatcher: Arc<D>,
    metrics: Arc<Metrics>,
    shutdown_deadline: Duration,
    /// Whether this is the replay topic's consumer: its tasks start a fresh attempt budget.
    fresh_budget: bool,
    /// Partitions this consumer paused. Pause and resume are called on changes only: each
    /// call is a librdkafka operation that also discards the partition's prefetched records
    /// (to be fetched again), so repeating them per polled record cost CPU and broker fetches.
    paused: HashSet<i32>,
    /// The retry tier this consumer reads (lateness is measured per tier), or the replay topic.
    source: TaskSource,
}

/// Clock difference between instances tolerated in a task's due time.
pub const CLOCK_SKEW_MS: i64 = 5_000;

/// A task as read, made safe to hold: a due time further ahead than its topic can ask for (a
/// clock gone wrong, a hand-made record) is brought back to `now + max_ahead_ms`, so it cannot
/// hold its partition; an attempt number outside the schedule is clamped into it. A past due time
/// is fine: the task is late and runs at once. Returns the problems found, for metrics and logs.
pub fn sanitise(
    mut task: DeliveryTask,
    now: i64,
    max_ahead_ms: i64,
) -> (DeliveryTask, Vec<TaskRecordProblem>) {
    let mut problems = Vec::new();
    if task.due_at_ms > now.saturating_add(max_ahead_ms) {
        task.due_at_ms = now.saturating_add(max_ahead_ms);
        problems.push(TaskRecordProblem::DueTooLate);
    }
    if !(1..=MAX_ATTEMPTS).contains(&task.attempt) {
        task.attempt = task.attempt.clamp(1, MAX_ATTEMPTS);
        problems.push(TaskRecordProblem::BadAttempt);
    }
    (task, problems)
}

struct Held {
    token: Token,
    task: DeliveryTask,
}

impl<D: Dispatcher> TaskConsumer<D> {
    /// A consumer of `topic` (a retry tier or the replay topic) in group `<kafka.group_id>.<topic>`,
    /// whose tasks are due at most `max_delay_ms` after they were written.
    pub fn new(
        config: &Config,
        topic: &str,
        max_delay_ms: i64,
        dispatcher: Arc<D>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let (context, rebalances) =
            RebalanceContext::new(Duration::from_secs(config.delivery.shutdown_deadline_secs));
        // A group of its own per task topic: a tier consumer joining or leaving never
        // rebalances (and so never interrupts) the event consumer or the other tiers.
        let group = format!("{}.{topic}", config.kafka.group_id);
        let role = format!("tasks-{topic}");
        let context = context
            .with_lag(metrics.consumer_lag())
            .with_client_stats(metrics.kafka_client(&role));
        let consumer = kafka::group_consumer(config, &role, &group, "earliest", context)?;
        Ok(TaskConsumer {
            consumer: Arc::new(consumer),
            rebalances,
            topic: topic.to_string(),
            max_ahead_ms: max_delay_ms + CLOCK_SKEW_MS,
            fresh_budget: topic == config.topics.replay,
            dispatcher,
            metrics,
            shutdown_deadline: Duration::from_secs(config.delivery.shutdown_deadline_secs),
            paused: HashSet::new(),
            source: task_source(config, topic),
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
        // A slot taken while tasks were due and none was free; used first.
        let mut permit: Option<Permit> = None;
        loop {
            let now = now_ms();
            let fronts = || held.values().filter_map(|q| q.front());
            let next_due = fronts().map(|h| h.task.due_at_ms).min();
            let due_now = next_due.is_some_and(|due| due <= now);
            let wait = next_due.map_or(Duration::from_secs(3600), |due| {
                Duration::from_millis((due - now).max(0) as u64)
            });
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = in_flight.failed().cancelled() => break,
                Some(ev) = self.rebalances.recv() => self.on_rebalance(in_flight.tracker(), ev, &mut held),
                p = in_flight.permit(), if due_now && permit.is_none() => permit = Some(p?),
                _ = tokio::time::sleep(wait), if next_due.is_some() && !due_now => {}
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
                                    let (task, problems) = sanitise(task, now_ms(), self.max_ahead_ms);
                                    for problem in problems {
                                        self.metrics.task_record_problem(problem);
                                        warn!(
                                            topic = %self.topic, partition = m.partition(),
                                            offset = m.offset(), delivery_id = %task.delivery_id,
                                            problem = problem.as_str(), "task record clamped"
                                        );
                                    }
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
                                    self.metrics.task_record_problem(TaskRecordProblem::Undecodable);
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
            // Start every task that is due while slots are free, in partition order; pause
            // partitions that still hold tasks, resume drained ones.
            let now = now_ms();
            for (partition, queue) in held.iter_mut() {
                while queue.front().is_some_and(|h| h.task.due_at_ms <= now) {
                    let Some(slot) = permit.take().or_else(|| in_flight.try_permit()) else {
                        break;
                    };
                    let h = queue.pop_front().expect("front exists");
                    self.metrics
                        .task_started(self.source, h.task.due_at_ms, now);
                    let dispatcher = self.dispatcher.clone();
                    in_flight.spawn(slot, h.token, async move {
                        dispatcher.dispatch_task(h.task).await
                    });
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
/// Which retry tier `topic` is (for lateness per tier), or the replay topic.
fn task_source(config: &Config, topic: &str) -> TaskSource {
    let t = &config.topics;
    [
        (&t.retry_1s, Tier::OneSecond),
        (&t.retry_5s, Tier::FiveSeconds),
        (&t.retry_25s, Tier::TwentyFiveSeconds),
    ]
    .into_iter()
    .find(|(name, _)| name.as_str() == topic)
    .map_or(TaskSource::Replay, |(_, tier)| TaskSource::Tier(tier))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::SourceRef;

    fn task(attempt: u32, due_at_ms: i64) -> DeliveryTask {
        DeliveryTask {
            delivery_id: "dlv_1".into(),
            subscription_id: "sub_1".into(),
            event_type: "rewards.redeemed".into(),
            idempotency_key: "k".into(),
            body: "{}".into(),
            body_by_reference: false,
            attempt,
            due_at_ms,
            first_attempt_at_ms: 0,
            source: SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                timestamp_ms: None,
            },
            last_error: None,
            last_status: None,
            last_outcome: None,
            client_id: None,
            failed_at_ms: None,
            replay: None,
        }
    }

    #[test]
    fn poison_due_times_and_attempts_are_clamped() {
        use TaskRecordProblem::*;
        let now = 1_000_000;
        let ahead = 6_000;
        #[rustfmt::skip]
        let table: &[(u32, i64, u32, i64, &[TaskRecordProblem])] = &[
            // attempt, due, → attempt, due, problems
            (2, now + 1_000, 2, now + 1_000, &[]),
            (2, now + ahead, 2, now + ahead, &[]),
            (3, now - 86_400_000, 3, now - 86_400_000, &[]),
            (2, now + ahead + 1, 2, now + ahead, &[DueTooLate]),
            (2, i64::MAX, 2, now + ahead, &[DueTooLate]),
            (0, now, 1, now, &[BadAttempt]),
            (9, now, MAX_ATTEMPTS, now, &[BadAttempt]),
            (0, i64::MAX, 1, now + ahead, &[DueTooLate, BadAttempt]),
        ];
        for &(attempt, due, want_attempt, want_due, want) in table {
            let (t, problems) = sanitise(task(attempt, due), now, ahead);
            assert_eq!(
                (t.attempt, t.due_at_ms),
                (want_attempt, want_due),
                "{attempt} {due}"
            );
            assert_eq!(problems, want, "{attempt} {due}");
        }
    }
}
