//! The operator tools (SPEC §4, §7): the replay job, `failed list`, `deliveries show` and
//! `deliveries list`, the test webhook, and the secret handling of subscription admin. The CLI
//! and the admin console (`crate::console`) both call these functions. Each tool is a bounded job: it reads the topics it needs
//! without a consumer group, up to the end offsets captured when it started ([`read`]), and stops.
//!
//! This module owns what the tools share: the record selectors of `replay` and `failed list`
//! ([`SelectorArgs`], matched by the pure [`SelectorArgs::matches`]) and the parsing of times given on
//! the command line ([`parse_time_at`]). Guarantees: a selector never matches a record it should
//! not (table-tested); a bad selector value fails before anything is read, naming the flag.

pub mod admin;
pub mod deliveries;
pub mod failed;
pub mod progress;
pub mod read;
pub mod replay;
pub mod test_webhook;

use clap::Args;

use crate::delivery::http::Outcome;
use crate::delivery::DeliveryTask;

/// A command-line mistake the tools detect themselves (clap catches the rest); the binary exits
/// with status 2 for it, like for any bad argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Which failed records a tool works on. Values of one flag are alternatives (OR); different
/// flags must all hold (AND).
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectorArgs {
    /// Only deliveries to this subscription id (repeatable).
    #[arg(long = "subscription", value_name = "ID")]
    pub subscriptions: Vec<String>,
    /// Only deliveries of this event type (repeatable).
    #[arg(long = "event-type", value_name = "TYPE")]
    pub event_types: Vec<String>,
    /// Only this delivery (repeatable).
    #[arg(long = "delivery-id", value_name = "ID")]
    pub delivery_ids: Vec<String>,
    /// Only deliveries that failed at or after TIME. The time is the failed record's time: when
    /// the last attempt failed and the delivery was written to the failed topic. RFC 3339
    /// (2026-12-02T06:00:00Z) or an age before now (90s, 30m, 2h, 7d).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only deliveries that failed before TIME (the failed record's time, as for --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<i64>,
    /// Only deliveries whose last attempt ended with this outcome (repeatable): timeout,
    /// http_error, connect_error, tls_error, redirect, request_error, endpoint_saturated.
    #[arg(long = "reason", value_name = "OUTCOME", value_parser = parse_reason)]
    pub reasons: Vec<String>,
}

impl SelectorArgs {
    /// True when no flag narrows the selection.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
            && self.event_types.is_empty()
            && self.delivery_ids.is_empty()
            && self.since.is_none()
            && self.until.is_none()
            && self.reasons.is_empty()
    }

    /// Whether a failed `task`, written to the failed topic at `failed_at_ms`, is selected.
    pub fn matches(&self, task: &DeliveryTask, failed_at_ms: i64) -> bool {
        let any = |values: &[String], v: &str| values.is_empty() || values.iter().any(|x| x == v);
        any(&self.subscriptions, &task.subscription_id)
            && any(&self.event_types, &task.event_type)
            && any(&self.delivery_ids, &task.delivery_id)
            && any(&self.reasons, task.last_outcome_or_guess())
            && self.since.is_none_or(|s| failed_at_ms >= s)
            && self.until.is_none_or(|u| failed_at_ms < u)
    }

    /// The selection in words, for the tools' headers.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |name: &str, values: &[String]| {
            if !values.is_empty() {
                parts.push(format!("{name} {}", values.join("|")));
            }
        };
        list("subscription", &self.subscriptions);
        list("event type", &self.event_types);
        list("delivery id", &self.delivery_ids);
        list("reason", &self.reasons);
        if let Some(s) = self.since {
            parts.push(format!("failed since {}", crate::delivery::rfc3339_ms(s)));
        }
        if let Some(u) = self.until {
            parts.push(format!("failed before {}", crate::delivery::rfc3339_ms(u)));
        }
        if parts.is_empty() {
            "every failed delivery".into()
        } else {
            parts.join(", ")
        }
    }
}

impl SelectorArgs {
    /// Selectors from name/value pairs, named as the CLI's flags without dashes (`subscription`,
    /// `event_type`, `delivery_id`, `reason`, `since`, `until`; the console's forms and query
    /// strings), each value checked as the CLI checks it. Empty values are ignored; other names
    /// are left to the caller. A bad value fails naming its field.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ms: i64,
    ) -> Result<SelectorArgs, (&'static str, String)> {
        let mut s = SelectorArgs::default();
        for (k, v) in pairs {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match k {
                "subscription" => s.subscriptions.push(v.to_string()),
                "event_type" => s.event_types.push(v.to_string()),
                "delivery_id" => s.delivery_ids.push(v.to_string()),
                "reason" => s.reasons.push(parse_reason(v).map_err(|e| ("reason", e))?),
                "since" => s.since = Some(parse_time_at(v, now_ms).map_err(|e| ("since", e))?),
                "until" => s.until = Some(parse_time_at(v, now_ms).map_err(|e| ("until", e))?),
                _ => {}
            }
        }
        Ok(s)
    }
}

/// The last outcomes a failed record can carry, for `--reason`.
pub fn known_reasons() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Outcome::ALL
        .iter()
        .filter(|o| !o.is_success())
        .map(|o| o.as_str())
        .collect();
    all.push("unknown");
    all
}

/// A `--reason` value: one of [`known_reasons`].
pub fn parse_reason(s: &str) -> Result<String, String> {
    if known_reasons().contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown outcome {s:?}; one of {}",
            known_reasons().join(", ")
        ))
    }
}

/// [`parse_time_at`] relative to the current time (the clap value parser).
pub fn parse_time(s: &str) -> Result<i64, String> {
    parse_time_at(s, crate::delivery::now_ms())
}

/// A command-line time as Unix milliseconds: RFC 3339 (`2026-12-02T06:00:00Z`, any offset), or
/// an age before `now_ms`: a whole number with a unit `s`, `m`, `h` or `d` (`30m`, `7d`).
pub fn parse_time_at(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let unit_ms = match s.chars().last() {
        Some('s') => 1_000,
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => 86_400_000,
        _ => return Err(time_error(s)),
    };
    let n: i64 = s[..s.len() - 1].parse().map_err(|_| time_error(s))?;
    if n < 0 {
        return Err(time_error(s));
    }
    n.checked_mul(unit_ms)
        .map(|age| now_ms - age)
        .ok_or_else(|| time_error(s))
}

fn time_error(s: &str) -> String {
    format!(
        "{s:?} is not a time: give RFC 3339 (2026-12-02T06:00:00Z) or an age such as 90s, 30m, 2h, 7d"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::SourceRef;

    fn task(sub: &str, event_type: &str, id: &str, outcome: Option<&str>) -> DeliveryTask {
        DeliveryTask {
            delivery_id: id.into(),
            subscription_id: sub.into(),
            event_type: event_type.into(),
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
            last_status: None,
            last_outcome: outcome.map(str::to_string),
            client_id: Some(None),
            failed_at_ms: Some(1_000),
            replay: None,
        }
    }

    #[test]
    fn selectors_combine_and_within_or_across() {
        let pts = "rewards.points_awarded";
        let t = task("sub_a", pts, "dlv_1", Some("timeout"));
        let s = |f: &dyn Fn(&mut SelectorArgs)| {
            let mut a = SelectorArgs::default();
            f(&mut a);
            a
        };
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        #[rustfmt::skip]
        let cases: Vec<(SelectorArgs, bool, &str)> = vec![
            (s(&|_| {}), true, "no selector"),
            (s(&|a| a.subscriptions = v(&["sub_a"])), true, "subscription"),
            (s(&|a| a.subscriptions = v(&["sub_b"])), false, "other subscription"),
            (s(&|a| a.subscriptions = v(&["sub_b", "sub_a"])), true, "one of two subscriptions"),
            (s(&|a| a.event_types = v(&[pts])), true, "event type"),
            (s(&|a| a.event_types = v(&["cashback.processed"])), false, "other event type"),
            (s(&|a| a.delivery_ids = v(&["dlv_1"])), true, "delivery id"),
            (s(&|a| a.delivery_ids = v(&["dlv_2"])), false, "other delivery id"),
            (s(&|a| a.reasons = v(&["timeout"])), true, "reason"),
            (s(&|a| a.reasons = v(&["http_error"])), false, "other reason"),
            (s(&|a| a.since = Some(1_000)), true, "since is inclusive"),
            (s(&|a| a.since = Some(1_001)), false, "failed before since"),
            (s(&|a| a.until = Some(1_001)), true, "until"),
            (s(&|a| a.until = Some(1_000)), false, "until is exclusive"),
            (s(&|a| { a.subscriptions = v(&["sub_a"]); a.reasons = v(&["http_error"]) }), false, "AND across flags"),
            (s(&|a| { a.subscriptions = v(&["sub_a"]); a.event_types = v(&[pts]); a.since = Some(0) }), true, "all hold"),
        ];
        for (sel, expected, name) in cases {
            assert_eq!(sel.matches(&t, 1_000), expected, "case: {name}");
            assert_eq!(sel.is_empty(), name == "no selector", "is_empty: {name}");
        }
        // A record written before outcomes were recorded: guessed from the status.
        let mut old = task("sub_a", pts, "dlv_1", None);
        old.last_status = Some(503);
        assert!(s(&|a| a.reasons = v(&["http_error"])).matches(&old, 0));
    }

    #[test]
    fn times_parse_as_rfc3339_or_ages() {
        let now = 1_000_000_000_000;
        let cases: &[(&str, Result<i64, ()>)] = &[
            ("2001-09-09T01:46:40Z", Ok(now)),
            ("2001-09-09T03:46:40+02:00", Ok(now)),
            ("2001-09-09T01:46:40.500Z", Ok(now + 500)),
            ("90s", Ok(now - 90_000)),
            ("30m", Ok(now - 1_800_000)),
            ("2h", Ok(now - 7_200_000)),
            ("7d", Ok(now - 604_800_000)),
            ("0s", Ok(now)),
            ("", Err(())),
            ("7", Err(())),
            ("7w", Err(())),
            ("-1h", Err(())),
            ("h", Err(())),
            ("2001-09-09", Err(())),
            ("99999999999999999999d", Err(())),
        ];
        for (input, expected) in cases {
            let got = parse_time_at(input, now);
            assert_eq!(got.clone().map_err(|_| ()), *expected, "{input:?}");
            if let Err(e) = got {
                assert!(e.contains("RFC 3339"), "{e}");
            }
        }
    }

    #[test]
    fn selectors_from_pairs_are_checked_like_flags() {
        let now = 1_000_000_000_000;
        let s = SelectorArgs::from_pairs(
            [
                ("subscription", "a"),
                ("subscription", "b"),
                ("event_type", ""),
                ("reason", "timeout"),
                ("since", "1h"),
                ("other", "x"),
            ],
            now,
        )
        .unwrap();
        assert_eq!(s.subscriptions, ["a", "b"]);
        assert!(s.event_types.is_empty(), "an empty value is no selector");
        assert_eq!(s.since, Some(now - 3_600_000));
        assert_eq!(
            SelectorArgs::from_pairs([("since", "soon")], now)
                .unwrap_err()
                .0,
            "since"
        );
        assert_eq!(
            SelectorArgs::from_pairs([("reason", "success")], now)
                .unwrap_err()
                .0,
            "reason"
        );
    }

    #[test]
    fn reasons_are_checked_against_the_outcomes() {
        assert_eq!(parse_reason("timeout"), Ok("timeout".into()));
        assert!(parse_reason("success").is_err(), "a success never fails");
        let e = parse_reason("timout").unwrap_err();
        assert!(e.contains("http_error"), "{e}");
    }
}
