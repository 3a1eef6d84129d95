//! "Send a test webhook" (the console's action, and `subscriptions test`): one sample event
//! delivered to one subscription only, through the normal delivery path. The task is written to
//! the replay topic addressed to that subscription, so the processor's replay consumer attempts
//! it as any other task: signed with the subscription's current secret, logged in the delivery
//! log, retried through the tiers, and written to the failed topic if every attempt fails (from
//! where it can be replayed like any failure).
//!
//! Guarantees: no other subscription receives it (a task names exactly one subscription id); a
//! subscription that is missing, suspended, disabled, or does not take the event type or
//! client scope is refused before anything is written, with the reason. The task's source
//! coordinates name the pseudo-topic [`TEST_SOURCE_TOPIC`], so the delivery log tells a test
//! webhook from a real one; its delivery id is unique per send.

use anyhow::{anyhow, Context, Result};

use crate::config::Config;
use crate::delivery::{delivery_id, now_ms, Body, DeliveryTask};
use crate::events::RewardsEvent;
use crate::kafka::SourceRef;
use crate::matching::{recheck, Recheck, WILDCARD};
use crate::subscriptions::Subscription;

/// Why a subscription is not sent a test webhook (missing is [`crate::commands::NotFound`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NotSendable(pub String);

/// The `source.topic` of test webhooks in tasks and delivery-log records.
pub const TEST_SOURCE_TOPIC: &str = "mgpass.test-webhook";

/// The sample event type sent to `sub`: `wanted` when given, else its first event type, or
/// `rewards.points_awarded` for a `*` subscription.
pub fn test_event_type(sub: &Subscription, wanted: Option<&str>) -> String {
    if let Some(w) = wanted {
        return w.to_string();
    }
    sub.event_types
        .iter()
        .find(|t| *t != WILDCARD)
        .cloned()
        .unwrap_or_else(|| "rewards.points_awarded".to_string())
}

/// The delivery task of a test webhook to `sub`, built at `now` (pure but for the random
/// offset that makes the delivery id unique). Refused with the reason when the subscription
/// would not be sent it.
pub fn test_task(sub: &Subscription, event_type: &str, now: i64) -> Result<DeliveryTask> {
    let event = RewardsEvent::decode(Some(
        serde_json::to_vec(&crate::commands::sample_event(
            event_type,
            "usr_test_webhook",
            sub.client_id.as_deref(),
        ))?
        .as_slice(),
    ))
    .map_err(|e| anyhow!("the sample event does not decode: {e}"))?;
    match recheck(Some(sub), event_type, Some(event.client_id.as_deref())) {
        Recheck::Send => {}
        Recheck::Disabled => {
            return Err(NotSendable(format!("subscription {:?} is disabled", sub.id)).into())
        }
        _ => {
            return Err(NotSendable(format!(
                "subscription {:?} does not take {event_type:?} events",
                sub.id
            ))
            .into())
        }
    }
    let source = SourceRef {
        topic: TEST_SOURCE_TOPIC.to_string(),
        partition: 0,
        offset: rand::random::<u32>() as i64,
        timestamp_ms: Some(now),
    };
    Ok(DeliveryTask {
        delivery_id: delivery_id(&source, &sub.id),
        subscription_id: sub.id.clone(),
        event_type: event.event_type.clone(),
        idempotency_key: event.idempotency_key(),
        body: Body::of_event(&event),
        body_by_reference: false,
        attempt: 1,
        due_at_ms: now,
        first_attempt_at_ms: now,
        source,
        last_error: None,
        last_status: None,
        last_outcome: None,
        client_id: Some(event.client_id.clone()),
        failed_at_ms: None,
        replay: None,
    })
}

/// Sends a test webhook to subscription `id` (see the module doc); returns the task once Kafka
/// acknowledged it.
pub async fn send(config: &Config, id: &str, event_type: Option<&str>) -> Result<DeliveryTask> {
    let table = crate::commands::load_table(config).await?;
    if let Some(why) = table.invalid(id) {
        return Err(NotSendable(format!(
            "subscription {id:?} is suspended: its latest record is invalid ({})",
            why.message
        ))
        .into());
    }
    let sub = table
        .get(id)
        .ok_or_else(|| crate::commands::NotFound(id.to_string()))?;
    let event_type = test_event_type(&sub, event_type);
    let task = test_task(&sub, &event_type, now_ms())?;
    let value = serde_json::to_vec(&task).context("encoding the test task")?;
    let producer = crate::kafka::producer(config)?;
    crate::commands::produce(
        &producer,
        &config.topics.replay,
        Some(&task.delivery_id),
        Some(&value),
    )
    .await?;
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::SubscriptionRecord;

    fn sub(types: &[&str], client: Option<&str>, enabled: bool) -> Subscription {
        SubscriptionRecord {
            id: "s1".into(),
            url: "https://p.example/h".into(),
            event_types: types.iter().map(|s| s.to_string()).collect(),
            client_id: client.map(str::to_string),
            secret: "x".repeat(24),
            enabled,
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn a_test_task_names_one_subscription_and_its_scope() {
        let s = sub(&["cashback.processed"], Some("app1"), true);
        let t = test_task(&s, &test_event_type(&s, None), 1_000).unwrap();
        assert_eq!(t.subscription_id, "s1");
        assert_eq!(t.event_type, "cashback.processed");
        assert_eq!(t.client_id, Some(Some("app1".into())));
        assert_eq!(t.source.topic, TEST_SOURCE_TOPIC);
        assert_eq!((t.attempt, t.due_at_ms), (1, 1_000));
        assert!(
            t.body
                .starts_with(r#"{"event_type":"cashback.processed","data":{"#),
            "{:?}",
            t.body
        );
        assert!(
            !t.body.contains("client_id"),
            "the body has the three keys only"
        );
        let again = test_task(&s, "cashback.processed", 1_000).unwrap();
        assert_ne!(
            t.delivery_id, again.delivery_id,
            "each send is a delivery of its own"
        );
        assert_eq!(
            test_event_type(&sub(&["*"], None, true), None),
            "rewards.points_awarded"
        );
    }

    #[test]
    fn a_subscription_that_would_not_be_sent_it_is_refused() {
        let off = sub(&["*"], None, false);
        let e = test_task(&off, "rewards.redeemed", 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("disabled"), "{e}");
        let narrow = sub(&["cashback.processed"], None, true);
        let e = test_task(&narrow, "rewards.redeemed", 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not take"), "{e}");
    }
}
