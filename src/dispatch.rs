//! Event → delivery tasks, in one place: the [`Dispatcher`] interface the consume loops hand
//! their work to, the mapping of a matched event to its first-attempt tasks ([`first_tasks`]:
//! the webhook body built once per event, a stable delivery id per subscription), and the
//! delivery engine's implementation of the interface.
//!
//! Guarantee: a dispatcher returns only when everything it produced for the event or task is
//! acknowledged by Kafka, so the caller may then release the input offset for commit; an error
//! leaves the offset unreleased (the record is read again).

use std::future::Future;
use std::sync::Arc;

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};

use crate::delivery::engine::Engine;
use crate::delivery::{delivery_id, now_ms, Body, DeliveryTask};
use crate::events::RewardsEvent;
use crate::kafka::SourceRef;
use crate::subscriptions::Subscription;

/// Receives the work of the consume loops: every decoded event with the subscriptions it matched
/// (possibly none) and every delivery task that came due in a retry tier or the replay topic.
pub trait Dispatcher: Send + Sync + 'static {
    fn dispatch_event(
        &self,
        source: SourceRef,
        event: Arc<RewardsEvent>,
        subscriptions: Vec<Arc<Subscription>>,
    ) -> impl Future<Output = Result<()>> + Send;

    fn dispatch_task(&self, task: DeliveryTask) -> impl Future<Output = Result<()>> + Send;
}

/// The first-attempt tasks of an event for its matching subscriptions, sharing one body.
pub fn first_tasks(
    source: &SourceRef,
    event: &RewardsEvent,
    subscriptions: &[Arc<Subscription>],
) -> Vec<DeliveryTask> {
    if subscriptions.is_empty() {
        return Vec::new();
    }
    let body = Body::of_event(event);
    let key = event.idempotency_key();
    let now = now_ms();
    subscriptions
        .iter()
        .map(|s| DeliveryTask {
            delivery_id: delivery_id(source, &s.id),
            subscription_id: s.id.clone(),
            event_type: event.event_type.clone(),
            idempotency_key: key.clone(),
            body: body.clone(),
            body_by_reference: false,
            attempt: 1,
            due_at_ms: now,
            first_attempt_at_ms: now,
            source: source.clone(),
            last_error: None,
            last_status: None,
            last_outcome: None,
            client_id: Some(event.client_id.clone()),
            failed_at_ms: None,
            replay: None,
        })
        .collect()
}

/// The product's dispatcher: every first attempt and every due task is one engine attempt.
impl Dispatcher for Engine {
    async fn dispatch_event(
        &self,
        source: SourceRef,
        event: Arc<RewardsEvent>,
        subscriptions: Vec<Arc<Subscription>>,
    ) -> Result<()> {
        // At most `delivery.max_in_flight` attempts of one event are started at once (no more
        // can be on the wire anyway), so an event matched by thousands of subscriptions does
        // not hold thousands of attempt states.
        let mut tasks = first_tasks(&source, &event, &subscriptions);
        if tasks.len() <= 1 {
            return match tasks.pop() {
                Some(t) => self.attempt(t).await,
                None => Ok(()),
            };
        }
        futures::stream::iter(tasks)
            .map(|t| self.attempt(t))
            .buffer_unordered(self.max_in_flight())
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    async fn dispatch_task(&self, task: DeliveryTask) -> Result<()> {
        self.attempt(task).await
    }
}
