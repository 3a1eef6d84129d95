//! What failed and why: reading the failed topic into [`FailedRecord`]s selected by the shared
//! selectors (`failed list`, and the replay job's input), and reading one delivery's attempts from
//! the delivery log (`deliveries show`). Both are bounded reads ([`super::read`]); `--since`
//! starts at Kafka's offsets for that time instead of the beginning, so a look at the last hour
//! does not read 30 days. A record that does not decode is reported with its coordinates and
//! passed over, never fatal. Records are read in either form: JSON, or registered Avro
//! (`registry.output_format = "avro"`) decoded with the schema its id names.

use std::io::Write;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use rdkafka::message::Message;

use super::read::{read_bounded, ReadStats};
use super::SelectorArgs;
use crate::avro::records::{decode_record_waiting, TOOL_PATIENCE};
use crate::config::Config;
use crate::delivery::{rfc3339_ms, DeliveryLogRecord, DeliveryTask};
use crate::kafka::SourceRef;

/// One record of the failed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecord {
    /// Where it is in the failed topic.
    pub at: SourceRef,
    /// When it failed: `failed_at_ms` of the task, or the record's Kafka timestamp for records
    /// written before that field existed.
    pub failed_at_ms: i64,
    pub task: DeliveryTask,
}

/// A failed-topic record that is not a delivery task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    pub at: SourceRef,
    pub error: String,
}

/// The selected records of one bounded read of the failed topic, in topic order per partition.
#[derive(Debug, Default)]
pub struct FailedRead {
    pub selected: Vec<FailedRecord>,
    pub undecodable: Vec<Undecodable>,
    pub stats: ReadStats,
}

/// Reads the failed topic to the end offsets captured at start (from `select.since` when given)
/// and keeps the records `select` matches.
pub async fn read_failed(config: &Config, select: &SelectorArgs) -> Result<FailedRead> {
    let topic = &config.topics.failed;
    let mut out = FailedRead::default();
    // JSON records are decoded and selected as they are read; Avro ones
    // (registry.output_format = "avro") are kept and decoded after the read, with their schemas
    // from the registry, then selected in their place, so the topic order holds.
    let mut kept: Vec<(SourceRef, Option<i64>, Result<DeliveryTask, String>)> = Vec::new();
    let mut avro: Vec<(usize, Vec<u8>)> = Vec::new();
    out.stats = read_bounded(config, "failed", topic, select.since, |m| {
        let at = SourceRef {
            topic: topic.clone(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
        };
        let decoded = match m.payload() {
            None => Err("empty value".to_string()),
            Some(p) if crate::avro::is_framed(p) => {
                avro.push((kept.len(), p.to_vec()));
                Err(String::new())
            }
            Some(p) => serde_json::from_slice::<DeliveryTask>(p).map_err(|e| e.to_string()),
        };
        let record_ms = m.timestamp().to_millis();
        let unselected = matches!(&decoded, Ok(task)
            if !select.matches(task, task.failed_at_ms.or(record_ms).unwrap_or_default()));
        if !unselected {
            kept.push((at, record_ms, decoded));
        }
    })
    .await?;
    if !avro.is_empty() {
        let registry = crate::avro::registry::Registry::from_config(&config.registry)?;
        for (index, payload) in avro {
            kept[index].2 =
                decode_record_waiting(registry.as_deref(), &payload, TOOL_PATIENCE).await?;
        }
    }
    for (at, record_ms, decoded) in kept {
        match decoded {
            Ok(task) => {
                let failed_at_ms = task.failed_at_ms.or(record_ms).unwrap_or_default();
                if select.matches(&task, failed_at_ms) {
                    out.selected.push(FailedRecord {
                        at,
                        failed_at_ms,
                        task,
                    });
                }
            }
            Err(error) => out.undecodable.push(Undecodable { at, error }),
        }
    }
    Ok(out)
}

#[derive(Subcommand, Debug)]
pub enum FailedCommand {
    /// Print a table of failed deliveries (reads the failed topic to its end at start).
    List(ListArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct ListArgs {
    #[command(flatten)]
    pub select: SelectorArgs,
    /// Print at most this many rows (the most recent failures); the count covers them all.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
}

#[derive(Subcommand, Debug)]
pub enum DeliveriesCommand {
    /// Print every attempt of one delivery from the delivery log.
    Show(ShowArgs),
    /// Print a subscription's recent deliveries, newest first (the delivery log from --since).
    List(super::deliveries::ListDeliveriesArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ShowArgs {
    #[arg(long = "delivery-id", value_name = "ID")]
    pub delivery_id: String,
    /// Start reading the delivery log at the offsets for this time (Kafka's offsets-for-times)
    /// instead of its beginning. RFC 3339 or an age (30m, 2h, 7d). Without it the whole log
    /// (30 days by default) is read.
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub since: Option<i64>,
}

/// Cuts `s` to `max` characters, marking the cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The `failed list` table; `replayed_by` names the run that replayed a row since it failed.
pub fn render_failed<'a>(
    rows: &'a [FailedRecord],
    replayed_by: impl Fn(&'a FailedRecord) -> Option<&'a str>,
    limit: usize,
    out: &mut impl Write,
) -> Result<()> {
    writeln!(
        out,
        "{:<24}  {:<36}  {:<20}  {:<28}  {:<18}  {:<28}  ERROR",
        "FAILED AT",
        "DELIVERY ID",
        "SUBSCRIPTION",
        "EVENT TYPE",
        "LAST OUTCOME",
        "REPLAYED SINCE BY"
    )?;
    let mut rows: Vec<&FailedRecord> = rows.iter().collect();
    rows.sort_by_key(|r| r.failed_at_ms);
    let skip = rows.len().saturating_sub(limit);
    for r in &rows[skip..] {
        let t = &r.task;
        writeln!(
            out,
            "{:<24}  {:<36}  {:<20}  {:<28}  {:<18}  {:<28}  {}",
            rfc3339_ms(r.failed_at_ms),
            t.delivery_id,
            cut(&t.subscription_id, 20),
            cut(&t.event_type, 28),
            t.last_outcome_or_guess(),
            replayed_by(r).unwrap_or("-"),
            cut(t.last_error.as_deref().unwrap_or("-"), 80),
        )?;
    }
    if skip > 0 {
        writeln!(out, "… {skip} older rows not shown (--limit {limit})")?;
    }
    Ok(())
}

/// The selected failed records and the index of their replays since they failed: what
/// `failed list` and the console's failed page show.
pub async fn read_failed_with_replays(
    config: &Config,
    select: &SelectorArgs,
) -> Result<(FailedRead, super::replay::ReplayIndex)> {
    let read = read_failed(config, select).await?;
    let replays = match super::replay::replay_lookback(&read.selected, false) {
        Some(from) => super::replay::ReplayIndex::read(config, from).await?,
        None => Default::default(),
    };
    Ok((read, replays))
}

/// `failed list`: prints the table to `out`; returns the number of selected records.
pub async fn list(config: &Config, args: &ListArgs, out: &mut impl Write) -> Result<usize> {
    let (read, replays) = read_failed_with_replays(config, &args.select).await?;
    render_failed(
        &read.selected,
        |r| replays.replayed_by(&r.task.delivery_id, &r.at),
        args.limit,
        out,
    )?;
    for u in &read.undecodable {
        writeln!(
            out,
            "undecodable record at {}[{}]@{}: {}",
            u.at.topic, u.at.partition, u.at.offset, u.error
        )?;
    }
    writeln!(
        out,
        "{} failed deliveries ({}) of {} records read from {}",
        read.selected.len(),
        args.select.describe(),
        read.stats.records,
        config.topics.failed
    )?;
    Ok(read.selected.len())
}

/// Reads every delivery-log record of `delivery_id` (from `since_ms` when given).
pub async fn delivery_attempts(
    config: &Config,
    delivery_id: &str,
    since_ms: Option<i64>,
) -> Result<(Vec<DeliveryLogRecord>, ReadStats)> {
    let topic = &config.topics.delivery_log;
    let mut found = Vec::new();
    let mut bad = 0u64;
    let mut avro = Vec::new();
    // The key is the delivery id: compare it before decoding anything.
    let stats = read_bounded(config, "delivery-log", topic, since_ms, |m| {
        if m.key() == Some(delivery_id.as_bytes()) {
            match m.payload() {
                Some(p) if crate::avro::is_framed(p) => avro.push(p.to_vec()),
                Some(p) => match serde_json::from_slice::<DeliveryLogRecord>(p) {
                    Ok(r) => found.push(r),
                    Err(_) => bad += 1,
                },
                None => bad += 1,
            }
        }
    })
    .await?;
    // Avro records (registry.output_format = "avro"), with their schemas from the registry.
    if !avro.is_empty() {
        let registry = crate::avro::registry::Registry::from_config(&config.registry)?;
        for payload in avro {
            match decode_record_waiting(registry.as_deref(), &payload, TOOL_PATIENCE).await? {
                Ok(r) => found.push(r),
                Err(_) => bad += 1,
            }
        }
    }
    if bad > 0 {
        tracing::warn!(
            delivery_id,
            records = bad,
            "undecodable delivery-log records skipped"
        );
    }
    found.sort_by(|a, b| {
        (a.attempted_at.as_str(), a.attempt).cmp(&(b.attempted_at.as_str(), b.attempt))
    });
    Ok((found, stats))
}

/// The `deliveries show` table.
pub fn render_attempts(records: &[DeliveryLogRecord], out: &mut impl Write) -> Result<()> {
    if let Some(first) = records.first() {
        writeln!(
            out,
            "delivery {}  subscription {}  event type {}  source {}[{}]@{}  idempotency key {}",
            first.delivery_id,
            first.subscription_id,
            first.event_type,
            first.source.topic,
            first.source.partition,
            first.source.offset,
            first.idempotency_key
        )?;
    }
    writeln!(
        out,
        "{:<24}  {:>7}  {:<22}  {:>6}  {:>8}  {:<24}  {:<28}  ERROR",
        "ATTEMPTED AT", "ATTEMPT", "OUTCOME", "STATUS", "DURATION", "NEXT ATTEMPT", "REPLAY RUN"
    )?;
    for r in records {
        writeln!(
            out,
            "{:<24}  {:>7}  {:<22}  {:>6}  {:>6}ms  {:<24}  {:<28}  {}",
            r.attempted_at,
            r.attempt,
            r.outcome,
            r.http_status.map_or("-".into(), |s| s.to_string()),
            r.duration_ms,
            r.next_attempt_at.as_deref().unwrap_or("-"),
            r.replay.as_ref().map_or("-", |m| m.run_id.as_str()),
            cut(r.error.as_deref().unwrap_or("-"), 80),
        )?;
    }
    Ok(())
}

/// `deliveries show`: prints the attempts; fails when the log holds none for the id.
pub async fn show(config: &Config, args: &ShowArgs, out: &mut impl Write) -> Result<usize> {
    let (records, stats) = delivery_attempts(config, &args.delivery_id, args.since).await?;
    if records.is_empty() {
        return Err(anyhow!(
            "no delivery-log records for {:?} in {} ({} records read{})",
            args.delivery_id,
            config.topics.delivery_log,
            stats.records,
            args.since
                .map(|s| format!(" since {}", rfc3339_ms(s)))
                .unwrap_or_default()
        ));
    }
    render_attempts(&records, out)?;
    writeln!(
        out,
        "{} attempts ({} delivery-log records read)",
        records.len(),
        stats.records
    )?;
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_cells_are_cut_with_a_mark() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(cut("ééééé", 4), "ééé…");
    }
}
