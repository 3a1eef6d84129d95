//! The replay job: re-injects failed deliveries through the replay topic with a fresh attempt
//! budget. It is a bounded job: it reads the failed topic (all partitions, no consumer group) up
//! to the end offsets captured at start, selects with the shared selectors, plans, and produces.
//!
//! The plan ([`plan`], pure) passes over, with a reason, each selected record whose subscription
//! was deleted or disabled or no longer matches the event (the same [`recheck`] rule the processor
//! applies to retries), each delivery already replayed since it failed (unless `--force`), and all
//! but the latest failed record of a delivery that failed more than once.
//!
//! *Already replayed since it failed*: every replayed task carries a [`ReplayMarker`] naming the
//! failed record it came from. The job reads the replay topic to its end at start, from the
//! earliest selected failure on (less an hour for clock skew; see [`replay_lookback`]); a failed
//! record at offset `o` of partition `p` counts as replayed when a replay record for the same
//! delivery id names that partition and an offset `≥ o` (a delivery that fails again after a
//! replay gets a new, later failed record, which is replayable again). The look-back is the
//! replay topic's retention (7 days by default).
//!
//! Produced records keep the delivery id (the key, and `X-Webhook-Id` at the receiver), are
//! acknowledged by Kafka before they count, and are paced to `--rate` per second when given
//! ([`pace_wait`]). Progress goes to standard error (a bar on a terminal, a line every
//! [`super::progress::PROGRESS_EVERY`] otherwise), the summary to standard output; any record Kafka did not
//! acknowledge makes the job fail, naming the first error.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

use super::failed::{read_failed, FailedRecord};
use super::progress::Progress;
use super::read::read_bounded;
use super::{SelectorArgs, UsageError};
use crate::config::Config;
use crate::delivery::{now_ms, DeliveryTask, ReplayMarker};
use crate::kafka::SourceRef;
use crate::matching::{recheck, Recheck};
use crate::subscriptions::Subscription;

/// Records produced and not yet acknowledged, at most.
const MAX_UNACKED: usize = 10_000;

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub select: SelectorArgs,
    /// Replay every failed delivery (required when no selector is given).
    #[arg(long)]
    pub all: bool,
    /// Print what would be re-injected and skipped; produce nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Re-inject deliveries even when they were already replayed since they failed.
    #[arg(long)]
    pub force: bool,
    /// Produce at most N records per second (default: as fast as Kafka takes them).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Delivery ids shown per group in the plan.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub show_ids: usize,
}

impl Default for ReplayArgs {
    /// What the command line gives without flags (no selector, so `run` refuses it).
    fn default() -> Self {
        ReplayArgs {
            select: SelectorArgs::default(),
            all: false,
            dry_run: false,
            force: false,
            rate: None,
            show_ids: 3,
        }
    }
}

/// Why a selected record is not re-injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    SubscriptionDeleted,
    SubscriptionDisabled,
    SubscriptionMismatch,
    AlreadyReplayed,
    /// A later failed record of the same delivery is selected too.
    Superseded,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::SubscriptionDeleted => "subscription_deleted",
            Skip::SubscriptionDisabled => "subscription_disabled",
            Skip::SubscriptionMismatch => "subscription_mismatch",
            Skip::AlreadyReplayed => "already_replayed",
            Skip::Superseded => "superseded",
        }
    }

    fn of(check: Recheck) -> Option<Skip> {
        match check {
            Recheck::Send => None,
            Recheck::Deleted => Some(Skip::SubscriptionDeleted),
            Recheck::Disabled => Some(Skip::SubscriptionDisabled),
            Recheck::Mismatch => Some(Skip::SubscriptionMismatch),
        }
    }
}

/// delivery id → the failed records its replay records name, with the run that replayed each.
#[derive(Debug, Default, Clone)]
pub struct ReplayIndex(HashMap<String, Vec<(SourceRef, String)>>);

impl ReplayIndex {
    pub fn insert(&mut self, delivery_id: &str, failed: SourceRef, run_id: &str) {
        self.0
            .entry(delivery_id.to_string())
            .or_default()
            .push((failed, run_id.to_string()));
    }

    /// The run that replayed the failed record `at` of `delivery_id` since it was written (the
    /// latest such run when several did).
    pub fn replayed_by(&self, delivery_id: &str, at: &SourceRef) -> Option<&str> {
        self.0
            .get(delivery_id)?
            .iter()
            .filter(|(n, _)| {
                n.topic == at.topic && n.partition == at.partition && n.offset >= at.offset
            })
            .map(|(_, run)| run.as_str())
            .max()
    }

    /// Whether the failed record `at` of `delivery_id` was replayed since it was written.
    pub fn replayed(&self, delivery_id: &str, at: &SourceRef) -> bool {
        self.replayed_by(delivery_id, at).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads the replay topic (to its end at start, from `since_ms`) into an index.
    pub async fn read(config: &Config, since_ms: i64) -> Result<ReplayIndex> {
        let mut index = ReplayIndex::default();
        read_bounded(
            config,
            "replay",
            &config.topics.replay,
            Some(since_ms),
            |m| {
                if let Some(Ok(t)) = m.payload().map(serde_json::from_slice::<DeliveryTask>) {
                    if let Some(marker) = t.replay {
                        index.insert(&t.delivery_id, marker.failed, &marker.run_id);
                    }
                }
            },
        )
        .await?;
        Ok(index)
    }
}

/// What the job will do with the selection.
#[derive(Debug, Default)]
pub struct Plan {
    pub replay: Vec<FailedRecord>,
    pub skipped: Vec<(Skip, FailedRecord)>,
}

/// Decides, for every selected record, whether it is re-injected. `lookup` gives the current
/// subscription; with `force`, earlier replays are ignored (the other reasons still apply).
pub fn plan(
    selected: Vec<FailedRecord>,
    lookup: impl Fn(&str) -> Option<Arc<Subscription>>,
    replayed: &ReplayIndex,
    force: bool,
) -> Plan {
    // The latest failed record of each delivery: (partition, offset) grows with time.
    let mut latest: HashMap<&str, (i32, i64)> = HashMap::new();
    for r in &selected {
        let k = (r.at.partition, r.at.offset);
        latest
            .entry(r.task.delivery_id.as_str())
            .and_modify(|l| *l = (*l).max(k))
            .or_insert(k);
    }
    let latest: HashMap<String, (i32, i64)> = latest
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut p = Plan::default();
    for r in selected {
        let t = &r.task;
        let skip = if latest.get(&t.delivery_id) != Some(&(r.at.partition, r.at.offset)) {
            Some(Skip::Superseded)
        } else if !force && replayed.replayed(&t.delivery_id, &r.at) {
            Some(Skip::AlreadyReplayed)
        } else {
            let sub = lookup(&t.subscription_id);
            Skip::of(recheck(
                sub.as_deref(),
                &t.event_type,
                t.client_id.as_ref().map(Option::as_deref),
            ))
        };
        match skip {
            Some(s) => p.skipped.push((s, r)),
            None => p.replay.push(r),
        }
    }
    p
}

/// Allowance for clocks of different hosts when comparing failed and replay times.
pub const CLOCK_SKEW_MS: i64 = 3_600_000;

/// Where the "already replayed?" read of the replay topic starts: a record can only have been
/// replayed after it failed, so at the earliest selected failure (less [`CLOCK_SKEW_MS`]);
/// `None` when nothing needs reading (nothing selected, or `--force`).
pub fn replay_lookback(selected: &[FailedRecord], force: bool) -> Option<i64> {
    if force {
        return None;
    }
    selected
        .iter()
        .map(|r| r.failed_at_ms)
        .min()
        .map(|t| t.saturating_sub(CLOCK_SKEW_MS))
}

/// The task produced to the replay topic for failed record `r`.
pub fn replay_task(r: &FailedRecord, run_id: &str, now_ms: i64) -> DeliveryTask {
    DeliveryTask {
        replay: Some(ReplayMarker {
            run_id: run_id.to_string(),
            failed: r.at.clone(),
            replayed_at_ms: now_ms,
        }),
        failed_at_ms: None,
        ..r.task.clone().with_fresh_budget(now_ms)
    }
}

/// How long to wait before producing record number `sent` (0-based) at `rate` per second,
/// `elapsed` after the first: record `n` is due at `n / rate` seconds.
pub fn pace_wait(sent: u64, rate: Option<u32>, elapsed: Duration) -> Duration {
    match rate {
        None => Duration::ZERO,
        Some(r) => {
            let due =
                Duration::from_nanos(sent.saturating_mul(1_000_000_000) / u64::from(r.max(1)));
            due.saturating_sub(elapsed)
        }
    }
}

/// A new run id: `rpl_` + UTC time + 6 random hex digits.
pub fn new_run_id() -> String {
    use rand::Rng;
    format!(
        "rpl_{}_{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        rand::thread_rng().gen_range(0..0x100_0000u32)
    )
}

/// What a run did, for the caller and the tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub run_id: String,
    pub dry_run: bool,
    /// Failed-topic records read.
    pub read: u64,
    pub selected: usize,
    /// Records planned for re-injection.
    pub planned: usize,
    /// Acknowledged by Kafka.
    pub produced: u64,
    /// Skip reason → count.
    pub skipped: BTreeMap<&'static str, usize>,
    /// (subscription, event type) → count, of the planned records.
    pub by_group: BTreeMap<(String, String), usize>,
    pub undecodable: usize,
    /// Produce errors (delivery id: error), first ones only.
    pub errors: Vec<String>,
    /// Produce errors in all.
    pub error_count: u64,
    pub seconds: f64,
}

/// Records that Kafka did not take, in numbers and first messages.
struct Errors {
    count: u64,
    first: Vec<String>,
}

impl Errors {
    fn push(&mut self, delivery_id: &str, e: &KafkaError) {
        self.count += 1;
        if self.first.len() < 5 {
            self.first.push(format!("{delivery_id}: {e}"));
        }
    }
}

/// Progress of a running job for another observer than standard error (the console's progress
/// bar): records planned, and acknowledged so far.
#[derive(Debug, Default)]
pub struct Observed {
    pub planned: std::sync::atomic::AtomicU64,
    pub produced: std::sync::atomic::AtomicU64,
}

/// Runs the job: prints the plan (dry run) or the summary to `out`, progress to standard error.
/// Fails on a usage error before reading anything, and after producing when any record was not
/// acknowledged.
pub async fn run(config: &Config, args: &ReplayArgs, out: &mut impl Write) -> Result<Summary> {
    run_observed(config, args, out, None).await
}

/// [`run`], also counting progress into `observed` (the console runs the job this way).
pub async fn run_observed(
    config: &Config,
    args: &ReplayArgs,
    out: &mut impl Write,
    observed: Option<&Observed>,
) -> Result<Summary> {
    if args.select.is_empty() && !args.all {
        return Err(UsageError(
            "replay: no selector given; name at least one of --subscription, --event-type, \
             --delivery-id, --since, --until, --reason, or pass --all to replay every failed \
             delivery"
                .into(),
        )
        .into());
    }
    if args.all && !args.select.is_empty() {
        return Err(UsageError("replay: --all cannot be combined with selectors".into()).into());
    }
    let started = Instant::now();
    let run_id = new_run_id();
    let read = read_failed(config, &args.select).await?;
    let replayed = match replay_lookback(&read.selected, args.force) {
        Some(from) => ReplayIndex::read(config, from).await?,
        None => ReplayIndex::default(),
    };
    let table = crate::commands::load_table(config).await?;
    let selected = read.selected.len();
    let plan = plan(read.selected, |id| table.get(id), &replayed, args.force);
    let mut summary = Summary {
        run_id: run_id.clone(),
        dry_run: args.dry_run,
        read: read.stats.records,
        selected,
        planned: plan.replay.len(),
        undecodable: read.undecodable.len(),
        ..Summary::default()
    };
    for (skip, _) in &plan.skipped {
        *summary.skipped.entry(skip.as_str()).or_default() += 1;
    }
    for r in &plan.replay {
        *summary
            .by_group
            .entry((r.task.subscription_id.clone(), r.task.event_type.clone()))
            .or_default() += 1;
    }
    writeln!(
        out,
        "replay {run_id}{}: {} — read {} records of {} ({} partitions, to the end offsets at start), \
         {selected} selected",
        if args.dry_run { " (dry run)" } else { "" },
        args.select.describe(),
        read.stats.records,
        config.topics.failed,
        read.stats.partitions,
    )?;
    for u in &read.undecodable {
        writeln!(
            out,
            "  undecodable record at {}[{}]@{} passed over: {}",
            u.at.topic, u.at.partition, u.at.offset, u.error
        )?;
    }
    print_plan(&plan, args, out)?;
    if args.dry_run {
        writeln!(out, "dry run: nothing produced")?;
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    if plan.replay.is_empty() {
        writeln!(out, "nothing to replay{}", nothing_reason(&summary))?;
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let planned_in = started.elapsed().as_secs_f64();
    let producing = Instant::now();
    if let Some(o) = observed {
        o.planned.store(
            plan.replay.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let errors = produce(
        config,
        &plan.replay,
        &run_id,
        args.rate,
        &mut summary,
        observed,
    )
    .await?;
    let produce_secs = producing.elapsed().as_secs_f64().max(0.001);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.error_count = errors.count;
    summary.errors = errors.first;
    writeln!(
        out,
        "replay {run_id}: produced {} of {} to {} in {produce_secs:.1}s ({:.0}/s, after {planned_in:.1}s reading and planning); skipped {}",
        summary.produced,
        summary.planned,
        config.topics.replay,
        summary.produced as f64 / produce_secs,
        summary.skipped.values().sum::<usize>(),
    )?;
    if summary.error_count > 0 {
        return Err(anyhow!(
            "replay {run_id}: {} of {} records were not acknowledged by Kafka (first: {}); \
             running the same replay again re-injects only those",
            summary.error_count,
            summary.planned,
            summary.errors.join("; ")
        ));
    }
    Ok(summary)
}

fn nothing_reason(s: &Summary) -> String {
    if s.selected == 0 {
        return ": no failed delivery matches the selection".into();
    }
    let already = s.skipped.get("already_replayed").copied().unwrap_or(0);
    if already > 0 {
        format!(": {already} already replayed since they failed (--force replays them again)")
    } else {
        ": every selected delivery is skipped".into()
    }
}

fn print_plan(plan: &Plan, args: &ReplayArgs, out: &mut impl Write) -> Result<()> {
    let verb = if args.dry_run {
        "would replay"
    } else {
        "to replay"
    };
    writeln!(out, "{verb} {}:", plan.replay.len())?;
    let mut groups: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for r in &plan.replay {
        groups
            .entry((&r.task.subscription_id, &r.task.event_type))
            .or_default()
            .push(&r.task.delivery_id);
    }
    for ((sub, event_type), ids) in &groups {
        writeln!(
            out,
            "  {:<24} {:<30} {:>7}  {}",
            sub,
            event_type,
            ids.len(),
            first_ids(ids, args.show_ids)
        )?;
    }
    let verb = if args.dry_run {
        "would skip"
    } else {
        "skipped"
    };
    writeln!(out, "{verb} {}:", plan.skipped.len())?;
    let mut reasons: BTreeMap<Skip, Vec<&str>> = BTreeMap::new();
    for (skip, r) in &plan.skipped {
        reasons.entry(*skip).or_default().push(&r.task.delivery_id);
    }
    for (skip, ids) in &reasons {
        writeln!(
            out,
            "  {:<55} {:>7}  {}",
            skip.as_str(),
            ids.len(),
            first_ids(ids, args.show_ids)
        )?;
    }
    Ok(())
}

fn first_ids(ids: &[&str], n: usize) -> String {
    let mut s = ids.iter().take(n).copied().collect::<Vec<_>>().join(" ");
    if ids.len() > n {
        s.push_str(" …");
    }
    s
}

/// Produces the planned records, paced, with progress; fills `summary.produced`.
async fn produce(
    config: &Config,
    records: &[FailedRecord],
    run_id: &str,
    rate: Option<u32>,
    summary: &mut Summary,
    observed: Option<&Observed>,
) -> Result<Errors> {
    let producer = crate::kafka::producer(config)?;
    let topic = &config.topics.replay;
    let total = records.len() as u64;
    let mut progress = Progress::new("replay", total);
    let mut errors = Errors {
        count: 0,
        first: Vec::new(),
    };
    let mut acks = FuturesUnordered::new();
    let start = Instant::now();
    let mut acked = 0u64;
    let report = |acked: u64| {
        if let Some(o) = observed {
            o.produced
                .store(acked, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let settle =
        |r: (String, Result<(), KafkaError>), acked: &mut u64, errors: &mut Errors| match r.1 {
            Ok(()) => *acked += 1,
            Err(e) => errors.push(&r.0, &e),
        };
    for (n, r) in records.iter().enumerate() {
        let wait = pace_wait(n as u64, rate, start.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let task = replay_task(r, run_id, now_ms());
        let value = serde_json::to_vec(&task).context("encoding a replay task")?;
        let mut record = FutureRecord::to(topic)
            .key(task.delivery_id.as_str())
            .payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(ack) => {
                    let id = task.delivery_id.clone();
                    acks.push(ack.map(move |a| {
                        let r = match a {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(e),
                            Err(_) => Err(KafkaError::Canceled),
                        };
                        (id, r)
                    }));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if let Some(r) = acks.next().await {
                        settle(r, &mut acked, &mut errors);
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((e, _)) => {
                    errors.push(&task.delivery_id, &e);
                    break;
                }
            }
        }
        while acks.len() >= MAX_UNACKED {
            if let Some(r) = acks.next().await {
                settle(r, &mut acked, &mut errors);
            }
        }
        while let Some(Some(r)) = acks.next().now_or_never() {
            settle(r, &mut acked, &mut errors);
        }
        progress.show(acked, start.elapsed());
        report(acked);
    }
    while let Some(r) = acks.next().await {
        settle(r, &mut acked, &mut errors);
        progress.show(acked, start.elapsed());
        report(acked);
    }
    progress.finish(acked, start.elapsed());
    summary.produced = acked;
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::SubscriptionRecord;

    fn sub(id: &str, types: &[&str], client: Option<&str>, enabled: bool) -> Arc<Subscription> {
        Arc::new(
            SubscriptionRecord {
                id: id.into(),
                url: "https://p.example/h".into(),
                event_types: types.iter().map(|s| s.to_string()).collect(),
                client_id: client.map(str::to_string),
                secret: "s".repeat(32),
                enabled,
            }
            .validate()
            .unwrap(),
        )
    }

    fn failed(
        id: &str,
        sub: &str,
        client: Option<Option<&str>>,
        partition: i32,
        offset: i64,
    ) -> FailedRecord {
        FailedRecord {
            at: SourceRef {
                topic: "webhooks.failed".into(),
                partition,
                offset,
                timestamp_ms: None,
            },
            failed_at_ms: offset,
            task: DeliveryTask {
                delivery_id: id.into(),
                subscription_id: sub.into(),
                event_type: "rewards.points_awarded".into(),
                idempotency_key: "k".into(),
                body: "{}".into(),
                body_by_reference: false,
                attempt: 4,
                due_at_ms: 0,
                first_attempt_at_ms: 0,
                source: SourceRef {
                    topic: "e".into(),
                    partition: 0,
                    offset: 0,
                    timestamp_ms: None,
                },
                last_error: None,
                last_status: Some(500),
                last_outcome: Some("http_error".into()),
                client_id: client.map(|c| c.map(str::to_string)),
                failed_at_ms: Some(offset),
                replay: None,
            },
        }
    }

    #[test]
    fn the_plan_skips_with_the_right_reason() {
        let pts = "rewards.points_awarded";
        let subs: HashMap<&str, Arc<Subscription>> = [
            ("ok", sub("ok", &["*"], None, true)),
            ("off", sub("off", &["*"], None, false)),
            ("narrow", sub("narrow", &["cashback.processed"], None, true)),
            ("scoped", sub("scoped", &[pts], Some("app2"), true)),
        ]
        .into();
        let mut replayed = ReplayIndex::default();
        let at = |p, o| SourceRef {
            topic: "webhooks.failed".into(),
            partition: p,
            offset: o,
            timestamp_ms: None,
        };
        replayed.insert("dlv_done", at(0, 7), "rpl_1");
        replayed.insert("dlv_again", at(1, 3), "rpl_1");
        let selected = vec![
            failed("dlv_ok", "ok", Some(None), 0, 1),
            failed("dlv_gone", "gone", Some(None), 0, 2),
            failed("dlv_off", "off", Some(None), 0, 3),
            failed("dlv_narrow", "narrow", Some(None), 0, 4),
            failed("dlv_scoped", "scoped", Some(Some("app1")), 0, 5),
            failed("dlv_old", "scoped", None, 0, 6),
            failed("dlv_done", "ok", Some(None), 0, 7),
            // Replayed from offset 3, failed again at 9: replayable again.
            failed("dlv_again", "ok", Some(None), 1, 9),
            // Failed twice (e.g. a re-delivery after a crash): only the latest is replayed.
            failed("dlv_twice", "ok", Some(None), 2, 1),
            failed("dlv_twice", "ok", Some(None), 2, 4),
        ];
        let lookup = |id: &str| subs.get(id).cloned();
        let p = plan(selected.clone(), lookup, &replayed, false);
        let got = |p: &Plan| {
            let mut v: Vec<(String, &str)> = p
                .replay
                .iter()
                .map(|r| (format!("{}@{}", r.task.delivery_id, r.at.offset), "replay"))
                .chain(p.skipped.iter().map(|(s, r)| {
                    (
                        format!("{}@{}", r.task.delivery_id, r.at.offset),
                        s.as_str(),
                    )
                }))
                .collect();
            v.sort();
            v
        };
        let expected = vec![
            ("dlv_again@9".to_string(), "replay"),
            ("dlv_done@7".into(), "already_replayed"),
            ("dlv_gone@2".into(), "subscription_deleted"),
            ("dlv_narrow@4".into(), "subscription_mismatch"),
            ("dlv_off@3".into(), "subscription_disabled"),
            ("dlv_ok@1".into(), "replay"),
            ("dlv_old@6".into(), "replay"),
            ("dlv_scoped@5".into(), "subscription_mismatch"),
            ("dlv_twice@1".into(), "superseded"),
            ("dlv_twice@4".into(), "replay"),
        ];
        assert_eq!(got(&p), expected);
        // --force overrides only the earlier replay.
        let forced = plan(selected, lookup, &replayed, true);
        let mut expected = expected;
        expected[1].1 = "replay";
        assert_eq!(got(&forced), expected);
    }

    #[test]
    fn replayed_means_named_at_or_after_this_failed_record() {
        let mut idx = ReplayIndex::default();
        let at = |t: &str, p, o| SourceRef {
            topic: t.into(),
            partition: p,
            offset: o,
            timestamp_ms: None,
        };
        idx.insert("d", at("f", 1, 10), "rpl_a");
        idx.insert("d", at("f", 1, 2), "rpl_0");
        let cases = [
            ("d", at("f", 1, 10), true, "this record"),
            (
                "d",
                at("f", 1, 4),
                true,
                "an earlier record of the delivery",
            ),
            ("d", at("f", 1, 11), false, "failed again after the replay"),
            ("d", at("f", 2, 1), false, "another partition"),
            ("d", at("g", 1, 10), false, "another failed topic"),
            ("e", at("f", 1, 10), false, "another delivery"),
        ];
        for (id, failed, expected, name) in cases {
            assert_eq!(idx.replayed(id, &failed), expected, "{name}");
        }
        assert_eq!(idx.replayed_by("d", &at("f", 1, 3)), Some("rpl_a"));
    }

    #[test]
    fn a_replay_task_has_a_fresh_budget_the_same_id_and_a_marker() {
        let r = failed("dlv_1", "ok", Some(None), 2, 40);
        let t = replay_task(&r, "rpl_x", 5_000);
        assert_eq!((t.attempt, t.due_at_ms, t.failed_at_ms), (1, 5_000, None));
        assert_eq!(t.delivery_id, "dlv_1");
        assert_eq!(t.body, r.task.body);
        let m = t.replay.unwrap();
        assert_eq!((m.run_id.as_str(), m.replayed_at_ms), ("rpl_x", 5_000));
        assert_eq!((m.failed.partition, m.failed.offset), (2, 40));
    }

    #[test]
    fn the_replay_topic_is_read_from_the_earliest_selected_failure() {
        let a = failed("a", "ok", None, 0, 5_000_000);
        let b = failed("b", "ok", None, 0, 4_000_000);
        assert_eq!(
            replay_lookback(&[a.clone(), b.clone()], false),
            Some(4_000_000 - CLOCK_SKEW_MS)
        );
        assert_eq!(replay_lookback(&[a], true), None, "--force reads nothing");
        assert_eq!(replay_lookback(&[], false), None, "nothing selected");
    }

    #[test]
    fn pacing_spreads_records_over_time() {
        let ms = Duration::from_millis;
        let cases = [
            (0, None, ms(0), ms(0), "unpaced"),
            (5_000, None, ms(0), ms(0), "unpaced, any record"),
            (0, Some(100), ms(0), ms(0), "the first record at once"),
            (1, Some(100), ms(0), ms(10), "the second after 1/rate"),
            (100, Some(100), ms(400), ms(600), "record 100 at 1 s"),
            (100, Some(100), ms(1_500), ms(0), "behind schedule: at once"),
            (
                20_000,
                Some(2_000),
                ms(0),
                ms(10_000),
                "20,000 at 2,000/s take 10 s",
            ),
        ];
        for (sent, rate, elapsed, expected, name) in cases {
            assert_eq!(pace_wait(sent, rate, elapsed), expected, "{name}");
        }
    }

    #[test]
    fn run_ids_are_distinct_and_prefixed() {
        let (a, b) = (new_run_id(), new_run_id());
        assert!(
            a.starts_with("rpl_") && a.len() == "rpl_20261202T070000Z_abcdef".len(),
            "{a}"
        );
        assert_ne!(a, b);
    }
}
