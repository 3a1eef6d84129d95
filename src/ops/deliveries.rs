//! A subscription's recent deliveries from the delivery log (`deliveries list`, and the console's
//! subscription page): one bounded read from a time on ([`super::read`], Kafka's
//! offsets-for-times), every attempt of that subscription grouped by delivery id, newest first.
//! Bounded by time so a look at the last day never reads 30 days of log; bounded in rows so a
//! busy subscription cannot fill a page.

use std::collections::HashMap;
use std::io::Write;

use anyhow::Result;
use clap::Args;
use rdkafka::message::Message;

use super::read::ReadStats;
use crate::config::Config;
use crate::delivery::{rfc3339_ms, DeliveryLogRecord};

/// One delivery as its attempts in the window show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeliverySummary {
    pub delivery_id: String,
    pub subscription_id: String,
    pub event_type: String,
    /// Attempts read in the window.
    pub attempts: usize,
    /// The latest attempt: its number, outcome, status, duration, error, time.
    pub last_attempt: u32,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub last_attempted_at: String,
    pub first_attempted_at: String,
    /// When another attempt is scheduled.
    pub next_attempt_at: Option<String>,
    /// The replay run of the latest attempt, if any.
    pub replay_run: Option<String>,
    /// The source topic (a test webhook names `mgpass.test-webhook`).
    pub source_topic: String,
}

/// Groups attempt records into deliveries, newest (latest attempt) first, at most `limit`.
pub fn summarise(mut records: Vec<DeliveryLogRecord>, limit: usize) -> Vec<DeliverySummary> {
    records.sort_by(|a, b| {
        (a.attempted_at.as_str(), a.attempt).cmp(&(b.attempted_at.as_str(), b.attempt))
    });
    let mut by_id: HashMap<String, DeliverySummary> = HashMap::new();
    for r in records {
        let e = by_id
            .entry(r.delivery_id.clone())
            .or_insert_with(|| DeliverySummary {
                delivery_id: r.delivery_id.clone(),
                subscription_id: r.subscription_id.clone(),
                event_type: r.event_type.clone(),
                attempts: 0,
                last_attempt: 0,
                outcome: String::new(),
                http_status: None,
                duration_ms: 0,
                error: None,
                last_attempted_at: String::new(),
                first_attempted_at: r.attempted_at.clone(),
                next_attempt_at: None,
                replay_run: None,
                source_topic: r.source.topic.clone(),
            });
        e.attempts += 1;
        e.last_attempt = r.attempt;
        e.outcome = r.outcome;
        e.http_status = r.http_status;
        e.duration_ms = r.duration_ms;
        e.error = r.error;
        e.last_attempted_at = r.attempted_at;
        e.next_attempt_at = r.next_attempt_at;
        e.replay_run = r.replay.map(|m| m.run_id);
    }
    let mut out: Vec<DeliverySummary> = by_id.into_values().collect();
    out.sort_by(|a, b| {
        b.last_attempted_at
            .cmp(&a.last_attempted_at)
            .then_with(|| a.delivery_id.cmp(&b.delivery_id))
    });
    out.truncate(limit);
    out
}

/// The deliveries to `subscription_id` with an attempt at or after `since_ms`, newest first.
pub async fn recent(
    config: &Config,
    subscription_id: &str,
    since_ms: i64,
    limit: usize,
) -> Result<(Vec<DeliverySummary>, ReadStats)> {
    let mut found = Vec::new();
    let stats = super::read::read_bounded(
        config,
        "delivery-log",
        &config.topics.delivery_log,
        Some(since_ms),
        |m| {
            if let Some(Ok(r)) = m.payload().map(serde_json::from_slice::<DeliveryLogRecord>) {
                if r.subscription_id == subscription_id {
                    found.push(r);
                }
            }
        },
    )
    .await?;
    Ok((summarise(found, limit), stats))
}

#[derive(Args, Debug, Clone)]
pub struct ListDeliveriesArgs {
    /// The subscription whose deliveries to list.
    #[arg(long = "subscription", value_name = "ID")]
    pub subscription: String,
    /// Read the delivery log from this time on: RFC 3339 or an age (30m, 2h, 7d).
    #[arg(long, value_name = "TIME", value_parser = super::parse_time, default_value = "24h")]
    pub since: i64,
    /// Print at most this many deliveries (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// `deliveries list`: the table of a subscription's recent deliveries.
pub async fn list(
    config: &Config,
    args: &ListDeliveriesArgs,
    out: &mut impl Write,
) -> Result<usize> {
    let (rows, stats) = recent(config, &args.subscription, args.since, args.limit).await?;
    writeln!(
        out,
        "{:<24}  {:<36}  {:<28}  {:>8}  {:<20}  {:>6}  {:>8}  ERROR",
        "LAST ATTEMPT", "DELIVERY ID", "EVENT TYPE", "ATTEMPTS", "OUTCOME", "STATUS", "DURATION"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<24}  {:<36}  {:<28}  {:>8}  {:<20}  {:>6}  {:>6}ms  {}",
            r.last_attempted_at,
            r.delivery_id,
            r.event_type,
            r.attempts,
            r.outcome,
            r.http_status.map_or("-".into(), |s| s.to_string()),
            r.duration_ms,
            r.error.as_deref().unwrap_or("-"),
        )?;
    }
    writeln!(
        out,
        "{} deliveries to {} since {} ({} delivery-log records read)",
        rows.len(),
        args.subscription,
        rfc3339_ms(args.since),
        stats.records
    )?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::SourceRef;

    fn rec(id: &str, attempt: u32, at: &str, outcome: &str) -> DeliveryLogRecord {
        DeliveryLogRecord {
            delivery_id: id.into(),
            subscription_id: "s".into(),
            event_type: "rewards.redeemed".into(),
            idempotency_key: "k".into(),
            source: SourceRef {
                topic: "e".into(),
                partition: 0,
                offset: 0,
                timestamp_ms: None,
            },
            attempt,
            outcome: outcome.into(),
            http_status: None,
            error: None,
            duration_ms: 1,
            attempted_at: at.into(),
            next_attempt_at: None,
            replay: None,
        }
    }

    #[test]
    fn deliveries_are_grouped_newest_first_with_their_latest_attempt() {
        let rows = summarise(
            vec![
                rec("a", 2, "2026-01-01T00:00:02.000Z", "success"),
                rec("b", 1, "2026-01-01T00:00:03.000Z", "timeout"),
                rec("a", 1, "2026-01-01T00:00:01.000Z", "http_error"),
                rec("c", 1, "2026-01-01T00:00:00.000Z", "success"),
            ],
            2,
        );
        let got: Vec<(&str, usize, &str)> = rows
            .iter()
            .map(|r| (r.delivery_id.as_str(), r.attempts, r.outcome.as_str()))
            .collect();
        assert_eq!(
            got,
            [("b", 1, "timeout"), ("a", 2, "success")],
            "c is past the limit"
        );
        assert_eq!(rows[1].first_attempted_at, "2026-01-01T00:00:01.000Z");
    }
}
