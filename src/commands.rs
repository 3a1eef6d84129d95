//! The subcommands' work, as library functions so tests drive exactly what the binary runs:
//! the processor with its supervised tasks, subscription admin, and the sample event producer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::admin_server::{self, Health};
use crate::config::Config;
use crate::delivery::engine::Engine;
use crate::delivery::retry::TaskConsumer;
use crate::kafka;
use crate::metrics::Metrics;
use crate::processor::{Dispatcher, Processor};
use crate::subscriptions::loader::Loader;
use crate::subscriptions::{Subscription, SubscriptionRecord, SubscriptionTable};

/// Produces one record and waits for the broker's acknowledgement.
pub async fn produce(
    producer: &FutureProducer,
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

/// Validates and writes a subscription record (the secret in clear, as the processor needs it).
pub async fn put_subscription(config: &Config, record: SubscriptionRecord) -> Result<Subscription> {
    let sub = record
        .validate()
        .map_err(|e| anyhow!("invalid subscription: {}", e.message))?;
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

/// A sample rewards event as the guide shows it, with the current time.
pub fn sample_event(event_type: &str, user_id: &str, client_id: Option<&str>) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut event = serde_json::json!({
        "event_type": event_type,
        "data": {"user_id": user_id, "points": 150, "event_type": "purchase", "platform": "3news"},
        "timestamp": now,
    });
    if let Some(c) = client_id {
        event["client_id"] = serde_json::Value::from(c);
    }
    event
}

/// Runs the processor with the delivery engine: events are delivered, failed attempts wait in
/// the retry tiers, replayed tasks are attempted again.
pub async fn run_processor(
    config: Config,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    let table = Arc::new(SubscriptionTable::new());
    let producer = kafka::producer(&config)?;
    let engine = Arc::new(Engine::new(
        &config,
        producer,
        table.clone(),
        metrics.clone(),
    )?);
    run_pipeline(config, table, engine.clone(), Some(engine), metrics, cancel).await
}

/// Runs the processor's supervised tasks — admin server, subscription loader, event loop and,
/// with an engine, the retry-tier and replay consumers — sharing one cancellation token. Any
/// task's error cancels the others and is returned.
pub async fn run_pipeline<D: Dispatcher>(
    config: Config,
    table: Arc<SubscriptionTable>,
    dispatcher: D,
    engine: Option<Arc<Engine>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    kafka::check_reachable(&config, kafka::METADATA_TIMEOUT)?;
    let health = Arc::new(Health::new(table.clone()));
    let producer = kafka::producer(&config)?;
    let loader = Loader::new(&config, table.clone(), metrics.clone())?;
    let processor = Processor::new(
        &config,
        producer,
        table.clone(),
        metrics.clone(),
        health.clone(),
        dispatcher,
    )?;
    let mut task_consumers = Vec::new();
    if let Some(engine) = &engine {
        for topic in [
            &config.topics.retry_1s,
            &config.topics.retry_5s,
            &config.topics.retry_25s,
            &config.topics.replay,
        ] {
            task_consumers.push(TaskConsumer::new(&config, topic, engine.clone())?);
        }
    }
    let addr = config
        .admin
        .listen
        .parse()
        .context("admin.listen is not an address")?;

    let tasks = tokio_util::task::TaskTracker::new();
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<anyhow::Error>();
    type Task = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;
    let supervise = |name: &'static str, fut: Task| {
        let cancel = cancel.clone();
        let err_tx = err_tx.clone();
        tasks.spawn(async move {
            if let Err(e) = fut.await {
                let _ = err_tx.send(e.context(format!("task {name} failed")));
            }
            cancel.cancel();
        });
    };
    supervise(
        "admin-server",
        Box::pin(admin_server::serve(
            addr,
            metrics.clone(),
            health,
            cancel.clone(),
            None,
        )),
    );
    let loader_cancel = cancel.clone();
    supervise(
        "subscription-loader",
        Box::pin(async move { loader.run(loader_cancel, true).await.map(|_| ()) }),
    );
    supervise(
        "event-processor",
        Box::pin(Arc::new(processor).run(cancel.clone())),
    );
    for consumer in task_consumers {
        let c = cancel.clone();
        let table = table.clone();
        supervise(
            "task-consumer",
            Box::pin(async move {
                // Retries are attempted against the complete table too.
                tokio::select! {
                    _ = c.cancelled() => return Ok(()),
                    _ = table.wait_ready() => {}
                }
                consumer.run(c).await
            }),
        );
    }
    tasks.close();
    tasks.wait().await;
    drop(err_tx);
    match err_rx.recv().await {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
