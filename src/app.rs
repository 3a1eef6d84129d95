//! The composition root of the processor: builds the Kafka clients, the subscription table, the
//! delivery engine and the consume loops, and runs them as named, supervised tasks sharing one
//! cancellation token. Dependencies point one way from here: `app` → the consume loops
//! (`processor`, `retries`) → `dispatch` → `delivery` → `kafka` plumbing and the pure modules.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::admin_server::{self, Health};
use crate::config::Config;
use crate::delivery::engine::Engine;
use crate::delivery::Tier;
use crate::dispatch::Dispatcher;
use crate::kafka;
use crate::kafka::in_flight::panic_text;
use crate::metrics::Metrics;
use crate::processor::Processor;
use crate::retries::TaskConsumer;
use crate::subscriptions::loader::Loader;
use crate::subscriptions::SubscriptionTable;

/// Runs the processor with the delivery engine: events are delivered, failed attempts wait in
/// the retry tiers, replayed tasks are attempted again.
pub async fn run_processor(
    config: Config,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    let table = Arc::new(SubscriptionTable::new());
    let producer = kafka::observed_producer(&config, metrics.kafka_client("producer"))?;
    let engine = Arc::new(Engine::new(
        &config,
        producer,
        table.clone(),
        metrics.clone(),
    )?);
    run_pipeline(config, table, engine, metrics, cancel).await
}

/// Runs the processor's supervised tasks — admin server, subscription loader, event loop, the
/// retry-tier and replay consumers — sharing one cancellation token, with `dispatcher` doing the
/// work of every event and due task (the engine in production; tests may observe instead).
/// Any task's error cancels the others and is returned.
pub async fn run_pipeline<D: Dispatcher>(
    config: Config,
    table: Arc<SubscriptionTable>,
    dispatcher: Arc<D>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    kafka::check_reachable(&config, kafka::METADATA_TIMEOUT)?;
    let health = Arc::new(Health::new(table.clone(), cancel.clone()));
    let producer = kafka::observed_producer(&config, metrics.kafka_client("invalid-producer"))?;
    let loader = Loader::new(&config, table.clone(), metrics.clone())?;
    let processor = Processor::new(
        &config,
        producer,
        table.clone(),
        metrics.clone(),
        health.clone(),
        dispatcher.clone(),
    )?;
    let longest_tier = Tier::TwentyFiveSeconds.delay_ms();
    let task_consumers = [
        (&config.topics.retry_1s, Tier::OneSecond.delay_ms()),
        (&config.topics.retry_5s, Tier::FiveSeconds.delay_ms()),
        (&config.topics.retry_25s, longest_tier),
        (&config.topics.replay, longest_tier),
    ]
    .into_iter()
    .map(|(topic, max_delay)| {
        TaskConsumer::new(
            &config,
            topic,
            max_delay,
            dispatcher.clone(),
            metrics.clone(),
        )
    })
    .collect::<Result<Vec<_>>>()?;
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
            // A panic is a bug: it stops everything like an error does, never leaving a
            // process that answers /readyz while a loop is gone.
            let result = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(anyhow!("panicked: {}", panic_text(panic.as_ref()))),
            };
            if let Err(e) = result {
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
            health.clone(),
            cancel.clone(),
            None,
        )),
    );
    let (watch_config, watch_cancel) = (config.clone(), cancel.clone());
    supervise(
        "kafka-watch",
        Box::pin(async move {
            kafka::watch_reachable(
                &watch_config,
                &watch_config.topics.events,
                &health.kafka_reachable,
                watch_cancel,
            )
            .await
        }),
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
