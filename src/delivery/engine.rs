//! The delivery engine: one attempt of one delivery, end to end. It signs the body with the
//! subscription as it is *now* (a new URL or secret applies to retries; a deleted or disabled
//! subscription, or one that no longer matches the event — event types narrowed, client scope
//! changed — ends the delivery with a logged outcome), sends it within the global and
//! per-endpoint concurrency limits (a busy endpoint is waited for, but once every connection to
//! it is busy and the wait for one would exceed `delivery.endpoint_stall_ms` — nothing freed
//! for that long (for `delivery.slow_request_ms` once the endpoint is slow with every connection
//! on the wire), or a queue that takes longer to drain at the recent request duration — its
//! attempts fail at once as `endpoint_saturated` instead of holding slots that other endpoints
//! need; and an attempt unanswered for `delivery.slow_request_ms` marks its endpoint slow, and
//! slow endpoints together hold at most `delivery.slow_share_percent` of the global budget;
//! an endpoint that has not answered yet has an eighth of its connections, see
//! [`first_slots`]), writes the delivery-log record, and schedules the next
//! attempt in its retry tier or, after the last attempt, writes the failed record. It returns only
//! when every record it produced is acknowledged by Kafka, so callers can release the input
//! offset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use super::http::{AttemptResult, HttpClient, Outcome, Request};
use super::{
    after_failure_with, now_ms, rfc3339_ms, AfterFailure, Body, DeliveryLogEntry, DeliveryTask,
    Tier,
};
use crate::avro::records::{self, AvroOutput};
use crate::avro::EventDecoder;
use crate::config::Config;
use crate::kafka::fetch::{Fetched, RecordFetcher};
use crate::kafka::produce::{max_message_bytes, produce_all, Output, RECORD_OVERHEAD_BYTES};
use crate::kafka::OutputProducer;
use crate::matching::recheck;
use crate::metrics::{AttemptOutcome, Metrics};
use crate::signing::sign;
use crate::subscriptions::{Subscription, SubscriptionTable};

pub struct Engine {
    client: HttpClient,
    producer: OutputProducer,
    table: Arc<SubscriptionTable>,
    metrics: Arc<Metrics>,
    config: Config,
    global: Arc<Semaphore>,
    /// The share of `global` that slow endpoints may hold together
    /// (`delivery.slow_share_percent`); their attempts take one of these before a global one.
    slow: Arc<Semaphore>,
    slow_after: Duration,
    endpoints: Gates,
    /// The largest task record written with its body; larger ones carry it by reference.
    max_task_bytes: usize,
    /// Reads source events again, for task bodies carried by reference.
    sources: RecordFetcher,
    /// Decodes them (JSON or Avro) exactly as the event loop did.
    decoder: EventDecoder,
    /// Set with `registry.output_format = "avro"`: delivery-log and failed records as
    /// registered Avro.
    avro: Option<AvroOutputs>,
}

struct AvroOutputs {
    log: AvroOutput,
    failed: AvroOutput,
}

/// Why a body carried by reference could not be rebuilt: the delivery cannot be attempted.
#[derive(Debug, thiserror::Error)]
enum SourceProblem {
    #[error("the source event is no longer retained")]
    Gone,
    #[error("the source event no longer decodes: {0}")]
    Undecodable(String),
}

impl Engine {
    pub fn new(
        config: &Config,
        producer: OutputProducer,
        table: Arc<SubscriptionTable>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let decoder = EventDecoder::new(&config.registry)?;
        let avro = match decoder.registry() {
            Some(registry) if config.registry.writes_avro() => Some(AvroOutputs {
                log: AvroOutput::new(
                    registry.clone(),
                    &config.registry,
                    &config.topics.delivery_log,
                    records::DELIVERY_LOG_SCHEMA,
                )?,
                failed: AvroOutput::new(
                    registry.clone(),
                    &config.registry,
                    &config.topics.failed,
                    records::DELIVERY_TASK_SCHEMA,
                )?,
            }),
            _ => None,
        };
        Ok(Engine {
            decoder,
            avro,
            client: HttpClient::new(&config.http)?,
            producer,
            table,
            metrics,
            config: config.clone(),
            global: Arc::new(Semaphore::new(config.delivery.max_in_flight)),
            slow: Arc::new(Semaphore::new(slow_share(config))),
            slow_after: Duration::from_millis(config.delivery.slow_request_ms),
            endpoints: Gates::new(ENDPOINT_IDLE_EVICT),
            max_task_bytes: max_message_bytes(config).saturating_sub(RECORD_OVERHEAD_BYTES),
            sources: RecordFetcher::new(config),
        })
    }

    /// `delivery.max_in_flight`: more attempts than this cannot be on the wire at once.
    pub fn max_in_flight(&self) -> usize {
        self.config.delivery.max_in_flight
    }

    /// The body of a task carried by reference, rebuilt from its source event (the same bytes
    /// as the first attempt's). A broker that does not answer is waited for.
    async fn body_from_source(&self, task: &DeliveryTask) -> Result<Body, SourceProblem> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.sources.fetch(&task.source).await {
                Ok(Fetched::Record(m)) => {
                    // An Avro event's schema comes from the registry again: an outage is
                    // waited out, like the broker's.
                    return self
                        .decoder
                        .decode_waiting(rdkafka::Message::payload(&m), &self.metrics)
                        .await
                        .map(|e| Body::of_event(&e))
                        .map_err(|e| SourceProblem::Undecodable(e.to_string()));
                }
                Ok(Fetched::Gone) => return Err(SourceProblem::Gone),
                Err(e) => {
                    warn!(
                        delivery_id = %task.delivery_id, error = %format!("{e:#}"),
                        "reading the source event of a task failed; trying again"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn endpoint_gate(&self, sub: &Subscription) -> Arc<EndpointGate> {
        // `scheme://host[:port]` as written in the URL, which is its origin: subscription URLs
        // never carry credentials (refused at validation) and `url` drops a default port.
        let origin = &sub.url[..url::Position::AfterPort];
        let (gate, tracked) = self.endpoints.get(origin, || {
            EndpointGate::new(
                origin.to_string(),
                self.config.delivery.max_in_flight_per_endpoint,
                Duration::from_millis(self.config.delivery.endpoint_stall_ms),
                self.slow_after,
            )
        });
        if let Some(n) = tracked {
            self.metrics.endpoints_tracked.set(n as i64);
        }
        gate
    }

    /// The result of an attempt that was not sent (nothing dialled), as `endpoint_saturated`.
    fn not_sent(error: &str) -> AttemptResult {
        AttemptResult {
            outcome: Outcome::EndpointSaturated,
            status: None,
            error: Some(error.into()),
            response_excerpt: None,
            duration: Duration::ZERO,
            retry_after: None,
        }
    }

    /// Runs one attempt of `task` and produces its outputs; returns once they are acknowledged.
    pub async fn attempt(&self, mut task: DeliveryTask) -> Result<()> {
        // Memory: an attempt waiting for its endpoint or a global place is only this function's
        // small state; the HTTP exchange and the outputs (far larger futures) are boxed and
        // allocated once it may go on. An event of 20,000 deliveries parks up to
        // `delivery.max_in_flight` of these at once, and 4,096 events may be in flight.
        if task.body_by_reference {
            match Box::pin(self.body_from_source(&task)).await {
                Ok(body) => {
                    task.body = body;
                    task.body_by_reference = false;
                }
                Err(problem) => {
                    let outcome = "source_unavailable";
                    warn!(
                        delivery_id = %task.delivery_id, subscription_id = %task.subscription_id,
                        attempt = task.attempt, outcome, error = %problem,
                        "delivery ended: its body cannot be rebuilt"
                    );
                    self.metrics
                        .dropped(AttemptOutcome::SourceUnavailable, &task.event_type);
                    let error = problem.to_string();
                    let log = log_entry(&task, outcome, None, Some(&error), 0, now_ms(), None);
                    return Box::pin(self.log_only(log)).await;
                }
            }
        }
        let found = self.table.get(&task.subscription_id);
        let check = recheck(
            found.as_deref(),
            &task.event_type,
            task.client_id.as_ref().map(Option::as_deref),
        );
        let sub = match (found, check.outcome()) {
            (Some(s), None) => s,
            (_, outcome) => {
                let outcome = match outcome {
                    // Its latest record is invalid: suspended, as after a restart.
                    None | Some("subscription_deleted")
                        if self.table.invalid(&task.subscription_id).is_some() =>
                    {
                        "subscription_invalid"
                    }
                    other => other.unwrap_or("subscription_deleted"),
                };
                info!(
                    delivery_id = %task.delivery_id, subscription_id = %task.subscription_id,
                    attempt = task.attempt, outcome, replay = task.replay.is_some(),
                    "delivery ended: subscription gone or no longer matching"
                );
                self.metrics
                    .dropped(AttemptOutcome::not_sent(outcome), &task.event_type);
                let log = log_entry(&task, outcome, None, None, 0, now_ms(), None);
                return Box::pin(self.log_only(log)).await;
            }
        };
        let gate = self.endpoint_gate(&sub);
        let Some(endpoint_permit) = gate.acquire().await else {
            if gate.mark_stalled(true) {
                self.metrics.endpoint_stalled(true);
                warn!(
                    endpoint = %gate.origin,
                    in_flight = gate.limit(),
                    "endpoint stalled: every connection busy and none freed in time; its attempts \
                     fail as endpoint_saturated until one is"
                );
            }
            let result = Self::not_sent(
                "endpoint stalled: every connection busy, none freed lately; not sent",
            );
            return Box::pin(self.record(task, result, now_ms())).await;
        };
        if gate.mark_stalled(false) {
            self.metrics.endpoint_stalled(false);
            info!(endpoint = %gate.origin, "endpoint no longer stalled");
        }
        // A slow endpoint's attempt first takes a place in the slow endpoints' share, or is not
        // sent at all when the share is full: however many endpoints hang, they hold at most
        // that share of the global budget, the healthy ones keep the rest, and no record waits
        // behind a hanging endpoint (a wait here would hold its record, and its endpoint slot,
        // for as long as the hanging requests last).
        let mut slow_permit = None;
        if gate.is_slow() {
            match self.slow.clone().try_acquire_owned() {
                Ok(p) => slow_permit = Some(SlowPermit::new(p, &self.metrics)),
                Err(_) => {
                    let result = Self::not_sent(
                        "endpoint slow and the slow endpoints' share of the in-flight budget \
                         (delivery.slow_share_percent) is full; not sent",
                    );
                    return Box::pin(self.record(task, result, now_ms())).await;
                }
            }
        }
        let global_permit = self
            .global
            .clone()
            .acquire_owned()
            .await
            .context("limit closed")?;
        Box::pin(self.send(
            task,
            &sub,
            &gate,
            Permits {
                endpoint: endpoint_permit,
                slow: slow_permit,
                global: global_permit,
            },
        ))
        .await
    }

    /// The HTTP exchange of an attempt that holds its places, then its outputs.
    async fn send(
        &self,
        task: DeliveryTask,
        sub: &Subscription,
        gate: &Arc<EndpointGate>,
        permits: Permits<'_>,
    ) -> Result<()> {
        let Permits {
            endpoint: _endpoint_permit,
            slow: mut slow_permit,
            global: _global_permit,
        } = permits;
        let _sending = gate.sending();
        self.metrics.in_flight.inc();
        let signature = sign(sub.secret.expose().as_bytes(), task.body.as_bytes());
        let attempted_at = now_ms();
        let started = Instant::now();
        let send = self.client.send(Request {
            url: &sub.url,
            body: task.body.to_bytes(),
            signature: &signature,
            delivery_id: &task.delivery_id,
            attempt: task.attempt,
        });
        let result = if slow_permit.is_some() {
            send.await
        } else {
            tokio::pin!(send);
            tokio::select! {
                biased;
                result = &mut send => result,
                _ = tokio::time::sleep(self.slow_after) => {
                    // Unanswered for `slow_request_ms`: the endpoint is slow. Go on within the
                    // slow endpoints' share, or give up if they already hold all of it.
                    gate.mark_slow(true);
                    match self.slow.clone().try_acquire_owned() {
                        Ok(p) => {
                            slow_permit = Some(SlowPermit::new(p, &self.metrics));
                            send.await
                        }
                        Err(_) => {
                            self.metrics.slow_abandoned.inc();
                            AttemptResult {
                                outcome: Outcome::Timeout,
                                status: None,
                                error: Some(format!(
                                    "no answer within {} ms (delivery.slow_request_ms) while slow \
                                     endpoints held their whole share of the in-flight budget \
                                     (delivery.slow_share_percent); given up",
                                    self.slow_after.as_millis()
                                )),
                                response_excerpt: None,
                                duration: started.elapsed(),
                                retry_after: None,
                            }
                        }
                    }
                }
            }
        };
        if result.duration < self.slow_after {
            gate.mark_slow(false);
        }
        // Any end but a timeout is an answer, however slow: the endpoint does not hang.
        if result.outcome != Outcome::Timeout {
            gate.answered();
        }
        self.metrics.in_flight.dec();
        gate.observe(result.duration);
        drop(slow_permit);
        drop(_global_permit);
        drop(_sending);
        drop(_endpoint_permit);
        self.metrics.attempt_duration(result.duration);
        self.record(task, result, attempted_at).await
    }

    /// Writes a delivery-log record alone (an attempt that ended before it could be sent).
    async fn log_only(&self, log: DeliveryLogEntry<'_>) -> Result<()> {
        let output = self.log_output(&log).await?;
        self.produce_all(vec![output]).await
    }

    /// Writes the outputs of one attempt: its delivery-log record and, after a failure, the next
    /// attempt's task in its retry tier or, after the last attempt, the failed record.
    async fn record(
        &self,
        task: DeliveryTask,
        result: AttemptResult,
        attempted_at: i64,
    ) -> Result<()> {
        let outcome = AttemptOutcome::Http(result.outcome);
        self.metrics.attempt(outcome, &task.event_type);
        let duration_ms = result.duration.as_millis() as u64;
        let mut outputs = Vec::with_capacity(2);
        if result.outcome.is_success() {
            debug!(
                delivery_id = %task.delivery_id, subscription_id = %task.subscription_id,
                attempt = task.attempt, outcome = outcome.as_str(), "delivered"
            );
            self.metrics
                .delivered(&task.event_type, task.body.as_str(), now_ms());
            let log = log_entry(
                &task,
                "success",
                result.status,
                None,
                duration_ms,
                attempted_at,
                None,
            );
            outputs.push(self.log_output(&log).await?);
            return self.produce_all(outputs).await;
        }
        let error = result
            .error
            .clone()
            .or_else(|| result.status.map(|s| format!("HTTP {s}")));
        let next = match after_failure_with(task.attempt, result.retry_after) {
            AfterFailure::Retry(tier) => Some((tier, now_ms() + tier.delay_ms())),
            AfterFailure::Exhausted => None,
        };
        let log = log_entry(
            &task,
            result.outcome.as_str(),
            result.status,
            error.as_deref(),
            duration_ms,
            attempted_at,
            next.map(|(_, due)| due),
        );
        outputs.push(self.log_output(&log).await?);
        let rest = DeliveryTask {
            last_error: error,
            last_status: result.status,
            last_outcome: Some(result.outcome.as_str().to_string()),
            ..task
        };
        match next {
            Some((tier, due)) => {
                debug!(
                    delivery_id = %rest.delivery_id, subscription_id = %rest.subscription_id,
                    attempt = rest.attempt, outcome = result.outcome.as_str(), tier = tier.as_str(),
                    "attempt failed; retry scheduled"
                );
                let retry = DeliveryTask {
                    attempt: rest.attempt + 1,
                    due_at_ms: due,
                    ..rest
                };
                outputs.push(self.task_output(self.tier_topic(tier), &retry).await?);
                self.metrics.retry_scheduled(tier);
            }
            None => {
                warn!(
                    delivery_id = %rest.delivery_id, subscription_id = %rest.subscription_id,
                    attempt = rest.attempt, outcome = result.outcome.as_str(),
                    "delivery failed after its last attempt"
                );
                let failed = DeliveryTask {
                    failed_at_ms: Some(now_ms()),
                    ..rest
                };
                outputs.push(
                    self.task_output(&self.config.topics.failed, &failed)
                        .await?,
                );
                self.metrics.failed(&failed.event_type, outcome);
            }
        }
        self.produce_all(outputs).await
    }

    pub fn tier_topic(&self, tier: Tier) -> &str {
        match tier {
            Tier::OneSecond => &self.config.topics.retry_1s,
            Tier::FiveSeconds => &self.config.topics.retry_5s,
            Tier::TwentyFiveSeconds => &self.config.topics.retry_25s,
        }
    }

    async fn log_output(&self, log: &DeliveryLogEntry<'_>) -> Result<Output> {
        let value = match &self.avro {
            Some(avro) => avro.log.encode(log).await,
            None => json_value(log, LOG_RECORD_BYTES),
        }
        .context("encoding a delivery-log record")?;
        Ok(Output {
            topic: self.config.topics.delivery_log.clone(),
            key: Some(log.delivery_id.as_bytes().to_vec()),
            value: Some(value),
            headers: None,
        })
    }

    /// A task record; one that would exceed the producer's limit carries its body by reference.
    /// Failed records are Avro with `registry.output_format = "avro"`; retry tasks stay JSON.
    async fn task_output(&self, topic: &str, task: &DeliveryTask) -> Result<Output> {
        let avro = self
            .avro
            .as_ref()
            .filter(|_| topic == self.config.topics.failed)
            .map(|a| &a.failed);
        let mut value = encode_task(avro, task).await?;
        if value.len() > self.max_task_bytes {
            debug!(
                delivery_id = %task.delivery_id, bytes = value.len(),
                "task record too large with its body; the body goes by reference"
            );
            let by_reference = DeliveryTask {
                body: Body::default(),
                body_by_reference: true,
                ..task.clone()
            };
            value = encode_task(avro, &by_reference).await?;
        }
        Ok(Output {
            topic: topic.to_string(),
            key: Some(task.delivery_id.clone().into_bytes()),
            value: Some(value),
            headers: None,
        })
    }

    async fn produce_all(&self, outputs: Vec<Output>) -> Result<()> {
        produce_all(&self.producer, &outputs, &self.metrics).await
    }
}

/// A task record's value: Avro through `avro` when given, JSON otherwise.
async fn encode_task(avro: Option<&AvroOutput>, task: &DeliveryTask) -> Result<Vec<u8>> {
    match avro {
        Some(out) => out.encode(task).await,
        // The body is escaped into a string: a few bytes more than its own length.
        None => json_value(task, TASK_RECORD_BYTES + task.body.as_str().len() * 9 / 8),
    }
    .context("encoding a delivery task")
}

/// About the JSON size of a delivery-log record, and of a task record without its body: the
/// buffers they are written into start at this size, so writing one does not grow it again.
const LOG_RECORD_BYTES: usize = 512;
const TASK_RECORD_BYTES: usize = 512;

/// `value` as JSON, written into a buffer of `capacity` bytes to start with.
fn json_value(value: &impl serde::Serialize, capacity: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// The delivery-log record of one attempt of `task`, borrowing its ids, source and marker.
fn log_entry<'a>(
    task: &'a DeliveryTask,
    outcome: &'a str,
    status: Option<u16>,
    error: Option<&'a str>,
    duration_ms: u64,
    attempted_at: i64,
    next_attempt_at: Option<i64>,
) -> DeliveryLogEntry<'a> {
    DeliveryLogEntry {
        delivery_id: &task.delivery_id,
        subscription_id: &task.subscription_id,
        event_type: &task.event_type,
        idempotency_key: &task.idempotency_key,
        source: &task.source,
        attempt: task.attempt,
        outcome,
        http_status: status,
        error,
        duration_ms,
        attempted_at: rfc3339_ms(attempted_at),
        next_attempt_at: next_attempt_at.map(rfc3339_ms),
        replay: task.replay.as_ref(),
    }
}

/// The connection slots of an endpoint that has not answered yet (no attempt to it ended other
/// than in a timeout): an eighth of its limit (at least one). A new origin that hangs from its
/// first request would otherwise take its whole limit of global places before it is known to be
/// slow (`slow_request_ms`), and a few dozen such origins at once (a start with a backlog, a
/// batch of new partners) hold the entire global budget for that long while healthy endpoints
/// wait. A healthy endpoint answers within milliseconds, and a slow one when it answers, and
/// then gets all of its slots.
fn first_slots(limit: usize) -> usize {
    (limit / 8).max(1)
}

/// How long an endpoint's state (its concurrency gate, recent latency, slow and stalled flags)
/// is kept after its last attempt; partners come and go, and memory must not grow with every
/// origin ever seen.
pub const ENDPOINT_IDLE_EVICT: Duration = Duration::from_secs(600);

/// The places an attempt holds while it is sent: its endpoint's connection slot, a place in the
/// slow endpoints' share when its endpoint is slow, and a global one.
struct Permits<'a> {
    endpoint: OwnedSemaphorePermit,
    slow: Option<SlowPermit<'a>>,
    global: OwnedSemaphorePermit,
}

/// The places in flight that slow endpoints may hold together: `delivery.slow_share_percent`
/// of `delivery.max_in_flight`, at least one.
pub fn slow_share(config: &Config) -> usize {
    (config.delivery.max_in_flight * usize::from(config.delivery.slow_share_percent) / 100).max(1)
}

/// A place in the slow endpoints' share, counted in `webhooks_slow_in_flight` while held.
struct SlowPermit<'a> {
    _permit: OwnedSemaphorePermit,
    metrics: &'a Metrics,
}

impl<'a> SlowPermit<'a> {
    fn new(permit: OwnedSemaphorePermit, metrics: &'a Metrics) -> Self {
        metrics.slow_in_flight.inc();
        SlowPermit {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for SlowPermit<'_> {
    fn drop(&mut self) {
        self.metrics.slow_in_flight.dec();
    }
}

/// The endpoint gates by origin. Gates nobody holds and unused for `idle` are dropped by a sweep
/// that runs at most once per `idle / 4`, on lookups.
struct Gates {
    map: Mutex<HashMap<String, Arc<EndpointGate>>>,
    idle: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` after which the next lookup sweeps.
    next_sweep_ms: AtomicU64,
}

impl Gates {
    fn new(idle: Duration) -> Self {
        Gates {
            map: Mutex::new(HashMap::new()),
            idle,
            epoch: Instant::now(),
            next_sweep_ms: AtomicU64::new(0),
        }
    }

    /// The gate of `origin`, made by `make` if there is none; with the number of gates kept
    /// when that changed (a gate added or idle ones dropped).
    fn get(
        &self,
        origin: &str,
        make: impl FnOnce() -> EndpointGate,
    ) -> (Arc<EndpointGate>, Option<usize>) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let mut map = self.map.lock().expect("endpoint map poisoned");
        let mut changed = false;
        if now >= self.next_sweep_ms.load(Ordering::Relaxed) {
            let period = (self.idle / 4).as_millis() as u64;
            self.next_sweep_ms
                .store(now + period.max(1), Ordering::Relaxed);
            let before = map.len();
            map.retain(|_, gate| !gate.idle_for(self.idle));
            changed = map.len() != before;
        }
        if let Some(gate) = map.get(origin) {
            let gate = gate.clone();
            gate.touch();
            return (gate, changed.then_some(map.len()));
        }
        let gate = Arc::new(make());
        gate.touch();
        map.insert(origin.to_string(), gate.clone());
        (gate, Some(map.len()))
    }
}

/// The concurrency limit of one endpoint (URL origin) and what tells a busy endpoint from a
/// stalled one: when it last let a request start, its recent request duration and its queue.
struct EndpointGate {
    /// The URL origin this gate limits (for logs).
    origin: String,
    /// Whether the last decision was a refusal, to log transitions only.
    stalled: std::sync::atomic::AtomicBool,
    permits: Arc<Semaphore>,
    /// The slots it has now: [`first_slots`] of `full_limit` until the endpoint first answers.
    limit: AtomicU64,
    /// `delivery.max_in_flight_per_endpoint`.
    full_limit: u64,
    /// `delivery.endpoint_stall_ms`: how long a wait may grow before the endpoint counts as
    /// stalled.
    stall: Duration,
    /// How long no slot may be granted before a *slow* endpoint counts as stalled: the shorter
    /// of `stall` and `delivery.slow_request_ms`.
    slow_stall: Duration,
    /// Milliseconds since `epoch` at the last grant of a connection slot.
    last_grant_ms: AtomicU64,
    /// Moving average of request durations, microseconds.
    latency_us: AtomicU64,
    /// Request durations folded into `latency_us`.
    samples: AtomicU64,
    waiting: AtomicU64,
    /// Wakes every waiter when the watchdog finds the endpoint stalled.
    give_up: Notify,
    /// Whether a watchdog task is running for this gate (only while requests wait).
    watching: std::sync::atomic::AtomicBool,
    /// Whether an attempt lately went unanswered for `delivery.slow_request_ms`.
    slow: std::sync::atomic::AtomicBool,
    /// Attempts past every limit, on the wire (the others holding a slot wait for a global or
    /// slow-share place, which is no fault of this endpoint).
    sending: AtomicU64,
    /// Milliseconds since `epoch` at the last lookup of this gate.
    last_used_ms: AtomicU64,
    epoch: Instant,
}

/// An attempt on the wire, counted in [`EndpointGate::sending`] until dropped.
struct Sending<'a>(&'a EndpointGate);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EndpointGate {
    /// A gate of `limit` slots; `slow_after` is `delivery.slow_request_ms`.
    /// Until the endpoint first answers it gets [`first_slots`] of them.
    fn new(origin: String, limit: usize, stall: Duration, slow_after: Duration) -> Self {
        let limit = limit.max(1);
        let first = first_slots(limit);
        EndpointGate {
            origin,
            stalled: std::sync::atomic::AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(first)),
            limit: AtomicU64::new(first as u64),
            full_limit: limit as u64,
            stall,
            slow_stall: stall.min(slow_after),
            last_grant_ms: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            give_up: Notify::new(),
            watching: std::sync::atomic::AtomicBool::new(false),
            slow: std::sync::atomic::AtomicBool::new(false),
            sending: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The connection slots the endpoint has now.
    fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    /// An attempt ended other than in a timeout: the endpoint gets its full number of slots.
    fn answered(&self) {
        if self.limit() == self.full_limit {
            return;
        }
        // Only the first caller sees the smaller limit and adds the difference.
        let before = self.limit.swap(self.full_limit, Ordering::AcqRel);
        self.permits
            .add_permits((self.full_limit - before) as usize);
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_used_ms.fetch_max(now, Ordering::AcqRel);
    }

    /// Nobody holds this gate (no attempt, waiter or watchdog) and it was not looked up for
    /// `idle`.
    fn idle_for(self: &Arc<Self>, idle: Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        Arc::strong_count(self) == 1
            && now.saturating_sub(self.last_used_ms.load(Ordering::Acquire))
                >= idle.as_millis() as u64
    }

    fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    fn mark_slow(&self, slow: bool) {
        if self.slow.load(Ordering::Relaxed) != slow {
            self.slow.store(slow, Ordering::Relaxed);
        }
    }

    fn sending(&self) -> Sending<'_> {
        self.sending.fetch_add(1, Ordering::AcqRel);
        Sending(self)
    }

    /// Records whether the endpoint is refusing attempts; true when that changed.
    fn mark_stalled(&self, stalled: bool) -> bool {
        self.stalled.load(Ordering::Relaxed) != stalled
            && self.stalled.swap(stalled, Ordering::AcqRel) != stalled
    }

    fn granted(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_grant_ms.fetch_max(now, Ordering::AcqRel);
    }

    /// Folds one request duration into the moving average (weight 1/8).
    fn observe(&self, duration: Duration) {
        let sample = duration.as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_us.load(Ordering::Acquire);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.latency_us.store(new, Ordering::Release);
        self.samples.fetch_add(1, Ordering::AcqRel);
    }

    /// Every slot is busy and the wait for one would exceed the stall time: no slot was granted for
    /// that long (requests hang), or the queue ahead, at the recent request duration, takes
    /// longer than that to drain (requests are slower than the traffic for this endpoint).
    ///
    /// An endpoint already known to be slow (an attempt went unanswered for
    /// `delivery.slow_request_ms`) with every slot on the wire counts as hanging once no slot
    /// was granted for that shorter time: its first requests hang, none has completed, so no
    /// latency is known yet, and waiting the whole stall time would hold every attempt queued
    /// for it (and their event records, of which a bounded number may be in flight) for
    /// nothing. A slow endpoint that still answers grants a slot whenever one of its requests
    /// completes.
    ///
    /// The queue estimate applies only to a *slow* endpoint: one whose requests take more than a
    /// quarter of `stall` on average, over at least `limit` completed requests. A fast endpoint
    /// with a long queue is making progress (a backlog being caught up puts thousands of
    /// records for one partner in line) and is waited for; and the first requests, which
    /// include connection set-up while the whole backlog starts at once, do not count. Until
    /// then only the "nothing granted for `stall`" rule applies, which a hanging endpoint meets
    /// anyway.
    fn stalled(&self) -> bool {
        if self.permits.available_permits() > 0 {
            return false;
        }
        let stall_us = self.stall.as_micros() as u64;
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let idle_us = now_ms.saturating_sub(self.last_grant_ms.load(Ordering::Acquire)) * 1000;
        let sending = self.sending.load(Ordering::Acquire);
        let limit = self.limit();
        // The shorter time only when every slot is on the wire: a healthy endpoint on a
        // saturated host can have a slow request while its other slots wait for global places,
        // and it is not hanging.
        let idle_limit = if self.is_slow() && sending >= limit {
            self.slow_stall
        } else {
            self.stall
        };
        // Only requests on the wire can hang: slots whose holders all wait for a global place
        // are the global budget's queue, not this endpoint's stall.
        if idle_us > idle_limit.as_micros() as u64 && sending > 0 {
            return true;
        }
        let latency_us = self.latency_us.load(Ordering::Acquire);
        if self.samples.load(Ordering::Acquire) < limit || latency_us <= stall_us / 4 {
            return false;
        }
        let queue_us = self.waiting.load(Ordering::Acquire) * latency_us / limit;
        queue_us > stall_us
    }

    /// A connection slot, waiting in line while the wait stays under the stall time; `None` as soon as
    /// the endpoint is stalled (a fast but busy endpoint is waited for, a hanging one is not).
    async fn acquire(self: &Arc<Self>) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            self.granted();
            return Some(permit);
        }
        if self.stalled() {
            return None;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.watch();
        // Keep the place in the (fair) queue until a slot frees up or the watchdog gives up.
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => {
                self.granted();
                permit.ok()
            }
            _ = self.give_up.notified() => None,
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit
    }

    /// Makes sure one watchdog checks this gate every quarter of the stall time while requests wait, and
    /// wakes them all to give up once it is stalled. One timer per endpoint instead of one per
    /// waiting request: a backlog puts tens of thousands of requests in line.
    fn watch(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let gate = self.clone();
        let check = (self.slow_stall / 4).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(check).await;
                if gate.waiting.load(Ordering::Acquire) == 0 {
                    gate.watching.store(false, Ordering::Release);
                    // A request that started waiting since the load either saw `watching` still
                    // set (so keep going for it) or started a watchdog of its own.
                    if gate.waiting.load(Ordering::Acquire) == 0
                        || gate.watching.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                    continue;
                }
                if gate.stalled() {
                    gate.give_up.notify_waiters();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_endpoint_is_waited_for_and_a_stalled_one_refused() {
        let stall = Duration::from_millis(200);
        let gate = Arc::new(EndpointGate::new("https://test".into(), 1, stall, stall));
        let first = gate.acquire().await.expect("a free connection");
        // Busy but progressing: the waiter gets the slot when it frees up.
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first);
        assert!(waiter.await.unwrap(), "a busy endpoint is waited for");
        // Now hold the slot, on the wire, past the stall time: waiters and newcomers are refused.
        let held = gate.acquire().await.expect("free again");
        let on_wire = gate.sending();
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire().await.is_some() }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !waiter.await.unwrap(),
            "a waiter gives up once the endpoint stalls"
        );
        assert!(gate.acquire().await.is_none(), "newcomers fail at once");
        drop(on_wire);
        drop(held);
        assert!(
            gate.acquire().await.is_some(),
            "a freed slot ends the stall"
        );
    }

    #[tokio::test]
    async fn a_slow_endpoint_that_grants_nothing_stalls_after_the_slow_time() {
        // Stall time 10 s, slow time 200 ms: before the endpoint is slow only the stall time
        // counts; once it is, 200 ms without a grant is enough.
        let gate = Arc::new(EndpointGate::new(
            "https://test".into(),
            1,
            Duration::from_secs(10),
            Duration::from_millis(200),
        ));
        let held = gate.acquire().await.expect("a free connection");
        let on_wire = gate.sending();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!gate.stalled(), "not slow yet: the 10 s stall time applies");
        gate.mark_slow(true);
        assert!(
            gate.stalled(),
            "slow, on the wire, nothing granted for 300 ms"
        );
        let started = Instant::now();
        assert!(gate.acquire().await.is_none(), "newcomers fail at once");
        assert!(started.elapsed() < Duration::from_millis(100));
        // A waiter that came before the endpoint was slow gives up at the watchdog's next look.
        gate.mark_slow(false);
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.mark_slow(true);
        let gave_up = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert!(
            !gave_up
                .expect("the waiter gave up within the slow time")
                .unwrap(),
            "refused"
        );
        // A slow endpoint that answers again grants slots and is waited for.
        drop(on_wire);
        drop(held);
        assert!(
            gate.acquire().await.is_some(),
            "a freed slot ends the stall"
        );

        // Two slots, one on the wire and slow, the other waiting for a global place (a
        // healthy endpoint starved on a saturated host): only the whole stall time counts.
        let gate = Arc::new(EndpointGate::new(
            "https://test".into(),
            2,
            Duration::from_secs(10),
            Duration::from_millis(200),
        ));
        gate.answered();
        let _a = gate.acquire().await.expect("slot 1");
        let _b = gate.acquire().await.expect("slot 2");
        let _on_wire = gate.sending();
        gate.mark_slow(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !gate.stalled(),
            "a slot not on the wire: not hanging, the 10 s stall time applies"
        );
        let _both = gate.sending();
        assert!(gate.stalled(), "every slot on the wire: stalled");
    }

    #[tokio::test]
    async fn an_endpoint_gets_an_eighth_of_its_slots_until_it_first_answers() {
        assert_eq!(
            [1, 2, 7, 8, 16, 64, 100].map(first_slots),
            [1, 1, 1, 1, 2, 8, 12]
        );
        let stall = Duration::from_secs(10);
        let gate = Arc::new(EndpointGate::new("https://new".into(), 16, stall, stall));
        let first: Vec<_> = (0..2)
            .map(|_| gate.permits.clone().try_acquire_owned())
            .collect();
        assert!(first.iter().all(Result::is_ok), "2 of 16 slots at first");
        assert!(
            gate.permits.clone().try_acquire_owned().is_err(),
            "a third waits: nothing was answered yet"
        );
        assert_eq!(gate.limit(), 2);
        // "Every slot on the wire" means the two it has.
        let _on_wire = (gate.sending(), gate.sending());
        gate.mark_slow(true);
        gate.last_grant_ms.store(0, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!gate.stalled(), "slow time 10 s not reached");
        // The first answer opens the rest, once.
        gate.answered();
        gate.answered();
        assert_eq!(gate.limit(), 16);
        assert_eq!(gate.permits.available_permits(), 14);
    }

    #[tokio::test]
    async fn slots_waiting_for_a_global_place_are_not_a_stall() {
        // The holder of the only slot waits for a global (or slow-share) place: nothing is on
        // the wire, so however long that takes, the endpoint is queued, not stalled.
        let stall = Duration::from_millis(100);
        let gate = Arc::new(EndpointGate::new("https://test".into(), 1, stall, stall));
        let held = gate.acquire().await.expect("a free connection");
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire().await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!gate.stalled(), "nothing on the wire: not stalled");
        assert!(!waiter.is_finished(), "the waiter keeps its place");
        drop(held);
        assert!(waiter.await.unwrap(), "and gets the slot");
    }

    #[test]
    fn idle_endpoint_state_is_forgotten() {
        let make = || {
            EndpointGate::new(
                "https://a".into(),
                1,
                Duration::from_secs(2),
                Duration::from_secs(1),
            )
        };
        let gates = Gates::new(Duration::from_millis(40));
        let (a, n) = gates.get("https://a", make);
        assert_eq!(n, Some(1));
        let (b, n) = gates.get("https://b", make);
        assert_eq!(n, Some(2));
        drop(b);
        std::thread::sleep(Duration::from_millis(60));
        // The sweep on this lookup drops b (unused, nobody holds it), never a, still held.
        let (_c, n) = gates.get("https://c", make);
        assert_eq!(n, Some(2));
        let map = gates.map.lock().unwrap();
        assert!(map.contains_key("https://a") && map.contains_key("https://c"));
        assert!(!map.contains_key("https://b"));
        drop(map);
        // A held gate is kept however long it is idle.
        assert!(!a.idle_for(Duration::ZERO), "a is held here");
    }

    #[tokio::test]
    async fn a_queue_slower_to_drain_than_the_stall_time_is_refused() {
        let stall = Duration::from_millis(200);
        let gate = Arc::new(EndpointGate::new("https://test".into(), 1, stall, stall));
        gate.observe(Duration::from_millis(300));
        let _busy = gate.acquire().await.expect("a free connection");
        // One waiter ahead of nobody: 1 × 300 ms / 1 connection > 200 ms.
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire().await.is_some() }
        });
        assert!(
            !waiter.await.unwrap(),
            "refused once the queue estimate exceeds the stall time"
        );
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn slow_first_requests_do_not_make_a_busy_endpoint_stalled() {
        // Connection set-up makes the first requests slow; until `limit` requests have completed
        // only "nothing granted for the stall time" counts.
        let stall = Duration::from_millis(200);
        let gate = Arc::new(EndpointGate::new("https://test".into(), 2, stall, stall));
        gate.answered();
        let a = gate.acquire().await.expect("slot 1");
        let b = gate.acquire().await.expect("slot 2");
        gate.observe(Duration::from_secs(5));
        let waiters: Vec<_> = (0..6)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move {
                    let permit = gate.acquire().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    permit.is_some()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop((a, b));
        for w in waiters {
            assert!(w.await.unwrap(), "a waiter got a slot");
        }
        // Once `limit` requests have completed, the estimate applies: 6 waiting × 5 s / 2.
        gate.observe(Duration::from_secs(5));
        let _held = (gate.acquire().await, gate.acquire().await);
        gate.waiting.store(6, Ordering::Release);
        assert!(gate.stalled(), "queue estimate now counts");
    }

    #[tokio::test]
    async fn a_fast_endpoint_with_a_long_queue_is_waited_for() {
        let stall = Duration::from_millis(200);
        let gate = Arc::new(EndpointGate::new("https://test".into(), 1, stall, stall));
        gate.observe(Duration::from_millis(10));
        let _busy = gate.acquire().await.expect("a free connection");
        gate.waiting.store(1_000, Ordering::Release);
        assert!(!gate.stalled(), "10 ms requests: progressing, not stalled");
        gate.observe(Duration::from_secs(2));
        gate.observe(Duration::from_secs(2));
        assert!(gate.stalled(), "slow requests and a long queue: stalled");
    }

    #[test]
    fn the_gate_key_is_the_url_origin() {
        for (url, origin) in [
            (
                "https://partner.example/hooks?x=1",
                "https://partner.example",
            ),
            ("https://partner.example:443/a", "https://partner.example"),
            (
                "https://partner.example:8443/a",
                "https://partner.example:8443",
            ),
            ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
            ("https://BÜCHER.example/x", "https://xn--bcher-kva.example"),
        ] {
            let url = url::Url::parse(url).unwrap();
            assert_eq!(&url[..url::Position::AfterPort], origin);
            assert_eq!(url.origin().ascii_serialization(), origin);
        }
    }

    #[test]
    fn stall_transitions_are_reported_once() {
        let gate = EndpointGate::new(
            "https://test".into(),
            1,
            Duration::from_secs(2),
            Duration::from_secs(1),
        );
        assert!(gate.mark_stalled(true));
        assert!(!gate.mark_stalled(true));
        assert!(gate.mark_stalled(false));
        assert!(!gate.mark_stalled(false));
    }
}
