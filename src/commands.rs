//! The CLI's work besides running the processor (that is [`crate::app`]), as library functions
//! so tests drive exactly what the binary runs: subscription admin and the sample event producer.
//! The admin console (`crate::console`) calls the same functions: one implementation of every
//! subscription change (validation, secret generation and rotation, enable/disable, delete).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::kafka::OutputProducer;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::subscriptions::loader::Loader;
use crate::subscriptions::{
    InvalidSubscription, Subscription, SubscriptionRecord, SubscriptionTable,
};

/// Produces one record and waits for the broker's acknowledgement.
pub async fn produce(
    producer: &OutputProducer,
    topic: &str,
    key: Option<&str>,
    value: Option<&[u8]>,
) -> Result<()> {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("producing to {topic:?}"))?;
    Ok(())
}

/// A subscription record refused by validation; the error names the field
/// ([`InvalidSubscription::field`]) so a form can show it there.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid subscription: {}", .0.message)]
pub struct Refused(pub InvalidSubscription);

/// The subscription to change does not exist (or its latest record is invalid).
#[derive(Debug, Clone, thiserror::Error)]
#[error("no subscription with id {0:?}")]
pub struct NotFound(pub String);

/// Validates and writes a subscription record (the secret in clear, as the processor needs it).
/// A record that does not validate fails with [`Refused`] before anything is written.
pub async fn put_subscription(config: &Config, record: SubscriptionRecord) -> Result<Subscription> {
    let sub = record.validate().map_err(Refused)?;
    let value = serde_json::to_vec(&sub.to_record()).context("encoding the subscription")?;
    let producer = kafka::producer(config)?;
    produce(
        &producer,
        &config.topics.subscriptions,
        Some(&sub.id),
        Some(&value),
    )
    .await?;
    Ok(sub)
}

/// What an admin should know before relying on `url`, judged by the sending rules of `config`
/// (the processor's, when the CLI is given the processor's configuration): a plain `http://`
/// URL that is not sent to without `http.allow_http`, and a host that is, or resolves only to,
/// an address the address guard refuses. Empty when nothing is wrong. The record stays valid
/// either way: these are sending rules, applied at each attempt.
pub async fn url_warnings(config: &Config, url: &url::Url) -> Vec<String> {
    let mut out = Vec::new();
    if url.scheme() == "http" && !config.http.allow_http {
        out.push(
            "the URL is plain http://: the processor refuses to send to it unless \
             http.allow_http is set (local development only)"
                .to_string(),
        );
    }
    match crate::net_guard::Resolver::from_config(&config.http) {
        Err(e) => out.push(format!("cannot check the address: {e:#}")),
        Ok(resolver) => match resolver.check_url(url).await {
            Ok(_) => {}
            Err(e @ crate::net_guard::GuardError::Refused { .. }) => out.push(format!(
                "the URL's host {}: deliveries will fail as address_refused",
                e
            )),
            Err(e) => out.push(format!(
                "the URL's host cannot be checked now ({e}); deliveries will fail until it resolves"
            )),
        },
    }
    out
}

/// Changes the current record of subscription `id` with `change` and writes it (validated as a
/// whole, like `put`). Fails with [`NotFound`] when the topic holds no valid record for `id`.
pub async fn edit_subscription(
    config: &Config,
    id: &str,
    change: impl FnOnce(&mut SubscriptionRecord),
) -> Result<Subscription> {
    let table = load_table(config).await?;
    let current = table
        .get(id)
        .ok_or_else(|| NotFound(id.to_string()))?
        .to_record();
    let mut record = current;
    change(&mut record);
    record.id = id.to_string();
    put_subscription(config, record).await
}

/// Enables or disables subscription `id`, keeping everything else.
pub async fn set_enabled(config: &Config, id: &str, enabled: bool) -> Result<Subscription> {
    edit_subscription(config, id, |r| r.enabled = enabled).await
}

/// Gives subscription `id` a freshly generated secret; returns it (to be shown once).
pub async fn rotate_secret(config: &Config, id: &str) -> Result<(Subscription, Secret)> {
    let secret = Secret::generate();
    let sub = edit_subscription(config, id, |r| r.secret = secret.expose().to_string()).await?;
    Ok((sub, secret))
}

/// Writes the tombstone that deletes subscription `id`.
pub async fn delete_subscription(config: &Config, id: &str) -> Result<()> {
    crate::subscriptions::validate_id(id).map_err(|e| anyhow!("{}", e.message))?;
    let producer = kafka::producer(config)?;
    produce(&producer, &config.topics.subscriptions, Some(id), None).await
}

/// Reads the subscriptions topic to its current end into a fresh table.
pub async fn load_table(config: &Config) -> Result<Arc<SubscriptionTable>> {
    let table = Arc::new(SubscriptionTable::new());
    Loader::new(config, table.clone(), Arc::new(Metrics::new()))?
        .run(CancellationToken::new(), false)
        .await?;
    Ok(table)
}

/// A sample rewards event with the current time: the guide's example for
/// `rewards.points_awarded` (and any type outside the guide's list), and data of the shape of
/// its record in `schemas/rewards-event.avsc` for each other known type.
pub fn sample_event(event_type: &str, user_id: &str, client_id: Option<&str>) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut event = serde_json::json!({
        "event_type": event_type,
        "data": sample_data(event_type, user_id, &now),
        "timestamp": now,
    });
    if let Some(c) = client_id {
        event["client_id"] = serde_json::Value::from(c);
    }
    event
}

/// The `data` of [`sample_event`].
pub fn sample_data(event_type: &str, user_id: &str, now: &str) -> serde_json::Value {
    use serde_json::json;
    match event_type {
        "rewards.tier_promoted" => json!({"user_id": user_id, "previous_tier": "silver",
            "new_tier": "gold", "points_balance": 5200}),
        "rewards.redeemed" => json!({"user_id": user_id, "item_id": "itm_42",
            "item_name": "Coffee voucher", "points_spent": 300, "quantity": 1}),
        "cashback.redeemed" => json!({"user_id": user_id, "redemption_id": "rdm_7f3a",
            "points": 1000, "amount": 12.5, "currency": "GHS"}),
        "cashback.processed" => json!({"user_id": user_id, "redemption_id": "rdm_7f3a",
            "amount": 12.5, "currency": "GHS", "processed_at": now}),
        "cashback.rejected" => json!({"user_id": user_id, "redemption_id": "rdm_7f3a",
            "amount": 12.5, "currency": "GHS", "reason": "payout provider declined",
            "points_refunded": 1000}),
        "cashback.redemption_completed" => json!({"user_id": user_id,
            "redemption_id": "rdm_7f3a", "approved_by": "admin_ama", "note": null}),
        "cashback.redemption_cancelled" => json!({"user_id": user_id,
            "redemption_id": "rdm_7f3a", "cancelled_by": "admin_kofi",
            "reason": "duplicate request"}),
        "rewards.rule_created" => json!({"rule_id": "rule_9", "name": "Double points weekend",
            "points": 2, "event_types": ["purchase", "referral"], "active": true}),
        "rewards.catalog_created" => json!({"item_id": "itm_43", "name": "Cinema ticket",
            "points_cost": 800, "stock": 250, "tags": ["entertainment", "weekend"]}),
        "rewards.partner_created" => json!({"partner_id": "ptn_3news", "name": "3news",
            "platforms": ["web", "android"], "metadata": {"country": "GH", "tier": "gold"}}),
        _ => json!({"user_id": user_id, "points": 150, "event_type": "purchase",
            "platform": "3news"}),
    }
}

/// The subject the event schema is registered under with `strategy` (`topic_name`:
/// `<topic>-value`; `record_name`: the record's full name).
pub fn event_subject(strategy: &str, topic: &str) -> Result<String> {
    let schema = apache_avro::Schema::parse_str(crate::avro::REWARDS_EVENT_SCHEMA)?;
    Ok(crate::avro::records::subject(strategy, topic, &schema))
}

/// `event` (JSON, as [`sample_event`] makes it) as a Confluent-framed Avro value of
/// `schemas/rewards-event.avsc`, registering the schema under `subject` in the configured
/// registry. Returns the value and the schema id.
pub async fn avro_event(
    config: &Config,
    subject: &str,
    event: &serde_json::Value,
) -> Result<(Vec<u8>, u32)> {
    let registry = crate::avro::registry::Registry::from_config(&config.registry)?
        .context("--format avro needs a schema registry: set registry.url")?;
    let text = crate::avro::REWARDS_EVENT_SCHEMA;
    let id = registry.register(subject, text).await?;
    let schema = apache_avro::Schema::parse_str(text)?;
    let value = crate::avro::encode::event_to_avro(event, &schema)
        .map_err(|e| anyhow!("the event does not fit the event schema: {e}"))?;
    let datum = apache_avro::to_avro_datum(&schema, value)?;
    Ok((crate::avro::frame(id, &datum), id))
}
