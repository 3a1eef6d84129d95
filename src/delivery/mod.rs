//! Delivery of matched events to endpoints: the delivery task that travels through the retry,
//! replay and failed topics, the delivery-log record written for every attempt, the stable
//! delivery id and the retry schedule. One attempt end to end is the [`engine`]; the HTTP
//! request itself is [`http`]. Nothing here consumes from Kafka: the consume loops
//! (`processor`, `retries`) sit above and hand work down.
//!
//! The retry schedule is SPEC §4: attempt 1 at once; attempt 2 one second after attempt 1
//! failed, attempt 3 five seconds after attempt 2 failed, attempt 4 twenty-five seconds after
//! attempt 3 failed; a fourth failure ends the delivery in the failed topic.

pub mod engine;
mod h2_pool;
pub mod http;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::kafka::SourceRef;

/// Attempts a delivery gets before it goes to the failed topic.
pub const MAX_ATTEMPTS: u32 = 4;

/// The retry tiers, in order: attempt `n + 2` waits in tier `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tier {
    #[serde(rename = "1s")]
    OneSecond,
    #[serde(rename = "5s")]
    FiveSeconds,
    #[serde(rename = "25s")]
    TwentyFiveSeconds,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::OneSecond, Tier::FiveSeconds, Tier::TwentyFiveSeconds];

    pub fn delay_ms(self) -> i64 {
        match self {
            Tier::OneSecond => 1_000,
            Tier::FiveSeconds => 5_000,
            Tier::TwentyFiveSeconds => 25_000,
        }
    }

    /// Bounded label value and name suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::OneSecond => "1s",
            Tier::FiveSeconds => "5s",
            Tier::TwentyFiveSeconds => "25s",
        }
    }
}

/// What follows a failed attempt number `attempt` (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Wait in this tier; the next attempt is `attempt + 1`.
    Retry(Tier),
    /// The attempt budget is spent.
    Exhausted,
}

/// The retry schedule as a pure function.
pub fn after_failure(attempt: u32) -> AfterFailure {
    match attempt {
        0 | 1 => AfterFailure::Retry(Tier::OneSecond),
        2 => AfterFailure::Retry(Tier::FiveSeconds),
        3 => AfterFailure::Retry(Tier::TwentyFiveSeconds),
        _ => AfterFailure::Exhausted,
    }
}

/// What follows failed attempt `attempt` when the endpoint asked, with `Retry-After`, to wait
/// `retry_after` (see [`http::retry_after`]): the schedule's tier, or a later one when the
/// endpoint asked for longer — the smallest tier whose delay is at least the wait asked for, the
/// 25 s tier for any longer wait. Never an earlier tier than the schedule's, never a different
/// attempt count. Every task of a tier waits exactly the tier's delay, so a tier's partitions
/// stay in due order and a lengthened retry holds back no other task.
pub fn after_failure_with(attempt: u32, retry_after: Option<std::time::Duration>) -> AfterFailure {
    let scheduled = after_failure(attempt);
    let (AfterFailure::Retry(tier), Some(wait)) = (scheduled, retry_after) else {
        return scheduled;
    };
    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
    let asked = Tier::ALL
        .into_iter()
        .find(|t| t.delay_ms() >= wait_ms)
        .unwrap_or(Tier::TwentyFiveSeconds);
    AfterFailure::Retry(if asked.delay_ms() > tier.delay_ms() {
        asked
    } else {
        tier
    })
}

/// The stable delivery id of (source record, subscription): identical on every retry and replay
/// and after a crash re-reads the source record, so receivers can deduplicate on it. The record's
/// timestamp is part of it, so a topic deleted and created again (offsets from 0) gives new ids.
pub fn delivery_id(source: &SourceRef, subscription_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(source.topic.as_bytes());
    h.update([0]);
    h.update(source.partition.to_be_bytes());
    h.update(source.offset.to_be_bytes());
    if let Some(ts) = source.timestamp_ms {
        h.update([1]);
        h.update(ts.to_be_bytes());
    }
    h.update([0]);
    h.update(subscription_id.as_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 4 + 32];
    id[..4].copy_from_slice(b"dlv_");
    hex::encode_to_slice(&digest[..16], &mut id[4..]).expect("32 hex digits fit");
    std::str::from_utf8(&id).expect("ASCII").to_owned()
}

/// A webhook body: the exact UTF-8 JSON text that is signed and sent. Built once per event and
/// shared by every delivery of it (a clone is a reference count), handed to the HTTP client
/// without copying, and written as a JSON string in task records.
#[derive(Clone, PartialEq, Eq)]
pub struct Body(Arc<str>);

impl Body {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The body as HTTP request bytes, sharing this body's memory.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from_owner(self.clone())
    }
}

impl std::ops::Deref for Body {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body(s.into())
    }
}

impl Body {
    /// The webhook body of `event`: the canonical JSON of its type, data and timestamp.
    pub fn of_event(event: &crate::events::RewardsEvent) -> Body {
        let bytes = crate::body::build_body(&event.event_type, &event.data, &event.timestamp);
        Body::from(String::from_utf8(bytes).expect("the body builder writes UTF-8"))
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::from("")
    }
}

impl From<&str> for Body {
    fn from(s: &str) -> Self {
        Body(s.into())
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Body::from)
    }
}

/// Everything a later attempt needs: the value of retry, replay and failed records. The body is
/// kept byte-exact (it is UTF-8 JSON, stored as a string) unless the record would then exceed
/// the producer's limit: such a record carries `body_by_reference` and an empty body, and the
/// body is rebuilt from the source event (`source`), which gives the same bytes. The secret is
/// never stored: each attempt signs with the subscription as it is then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryTask {
    pub delivery_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub idempotency_key: String,
    #[serde(default)]
    pub body: Body,
    /// The body is not in this record: rebuild it from the source event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_by_reference: bool,
    /// Number of the attempt this task is for (1-based).
    pub attempt: u32,
    /// Not to be attempted before this time (Unix milliseconds).
    pub due_at_ms: i64,
    pub first_attempt_at_ms: i64,
    pub source: SourceRef,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_status: Option<u16>,
    /// Outcome of the last failed attempt (`timeout`, `http_error`, …); absent in tasks written
    /// before it was recorded, see [`DeliveryTask::last_outcome_or_guess`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
    /// The event's OAuth client, so retries and replays can re-check the subscription's client
    /// scope: `Some(None)` = the event had none, `None` = not recorded (a task written before
    /// this field existed; its scope is then not re-checked).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_option"
    )]
    pub client_id: Option<Option<String>>,
    /// When the task was written to the failed topic (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at_ms: Option<i64>,
    /// Set on tasks re-injected by the replay job, kept by their retries and failed record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayMarker>,
}

/// A field that is present, even as `null`, deserialises to `Some(value)`; an absent one to
/// `None` through `#[serde(default)]`.
fn present_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// What the replay job writes into a re-injected task: which run, which failed record it came
/// from (so a second run can tell it was replayed), and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayMarker {
    pub run_id: String,
    /// Coordinates of the failed record that was replayed.
    pub failed: SourceRef,
    /// Unix milliseconds.
    pub replayed_at_ms: i64,
}

impl DeliveryTask {
    /// The task as the replay topic's consumer starts it: a fresh attempt budget (attempt 1, due
    /// now), whatever attempt and due time it carries. Ids, body, source and marker are kept.
    pub fn with_fresh_budget(self, now_ms: i64) -> DeliveryTask {
        DeliveryTask {
            attempt: 1,
            due_at_ms: now_ms,
            ..self
        }
    }

    /// The last outcome, or for tasks written before it was recorded, `http_error` when a
    /// status is known and `unknown` otherwise.
    pub fn last_outcome_or_guess(&self) -> &str {
        match (&self.last_outcome, self.last_status) {
            (Some(o), _) => o,
            (None, Some(_)) => "http_error",
            (None, None) => "unknown",
        }
    }
}

/// One attempt as written to the delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryLogRecord {
    pub delivery_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub idempotency_key: String,
    pub source: SourceRef,
    pub attempt: u32,
    /// `success`, `http_error`, `timeout`, `connect_error`, `tls_error`, `redirect`,
    /// `request_error`, `endpoint_saturated`, `address_refused`, `subscription_deleted`,
    /// `subscription_disabled`, `subscription_invalid`, `subscription_mismatch`,
    /// `source_unavailable`.
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// RFC 3339, UTC.
    pub attempted_at: String,
    /// RFC 3339 time of the next attempt, when one is scheduled.
    pub next_attempt_at: Option<String>,
    /// The replay run this attempt belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayMarker>,
}

/// A delivery-log record as the engine writes it: the fields of [`DeliveryLogRecord`], in its
/// order and under its names, borrowed from the attempt's task instead of copied out of it (one
/// is written for every attempt). Both serialise to the same JSON and the same Avro datum.
#[derive(Debug, Serialize)]
pub struct DeliveryLogEntry<'a> {
    pub delivery_id: &'a str,
    pub subscription_id: &'a str,
    pub event_type: &'a str,
    pub idempotency_key: &'a str,
    pub source: &'a SourceRef,
    pub attempt: u32,
    pub outcome: &'a str,
    pub http_status: Option<u16>,
    pub error: Option<&'a str>,
    pub duration_ms: u64,
    pub attempted_at: String,
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<&'a ReplayMarker>,
}

#[cfg(test)]
impl DeliveryLogRecord {
    /// The same record as the engine's borrowed form (the tests compare what both write).
    pub fn as_entry(&self) -> DeliveryLogEntry<'_> {
        DeliveryLogEntry {
            delivery_id: &self.delivery_id,
            subscription_id: &self.subscription_id,
            event_type: &self.event_type,
            idempotency_key: &self.idempotency_key,
            source: &self.source,
            attempt: self.attempt,
            outcome: &self.outcome,
            http_status: self.http_status,
            error: self.error.as_deref(),
            duration_ms: self.duration_ms,
            attempted_at: self.attempted_at.clone(),
            next_attempt_at: self.next_attempt_at.clone(),
            replay: self.replay.as_ref(),
        }
    }
}

/// Unix milliseconds → RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    crate::events::utc_millis(&chrono::DateTime::from_timestamp_millis(unix_ms).unwrap_or_default())
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_is_1_5_25_then_exhausted() {
        let table = [
            (1, AfterFailure::Retry(Tier::OneSecond)),
            (2, AfterFailure::Retry(Tier::FiveSeconds)),
            (3, AfterFailure::Retry(Tier::TwentyFiveSeconds)),
            (4, AfterFailure::Exhausted),
            (5, AfterFailure::Exhausted),
        ];
        for (attempt, expected) in table {
            assert_eq!(after_failure(attempt), expected, "attempt {attempt}");
        }
        let delays: Vec<i64> = Tier::ALL.iter().map(|t| t.delay_ms()).collect();
        assert_eq!(delays, [1_000, 5_000, 25_000]);
        // Cumulative: attempts at about 0, 1, 6 and 31 seconds.
        let mut at = 0;
        let mut times = vec![at];
        for attempt in 1..MAX_ATTEMPTS {
            if let AfterFailure::Retry(t) = after_failure(attempt) {
                at += t.delay_ms();
                times.push(at);
            }
        }
        assert_eq!(times, [0, 1_000, 6_000, 31_000]);
    }

    #[test]
    fn retry_after_lengthens_the_schedule_to_a_tier_and_never_shortens_it() {
        use std::time::Duration;
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        use AfterFailure::{Exhausted, Retry};
        use Tier::*;
        #[rustfmt::skip]
        let table: &[(u32, Option<Duration>, AfterFailure)] = &[
            // No Retry-After, or one asking for less: the schedule.
            (1, None, Retry(OneSecond)),
            (2, None, Retry(FiveSeconds)),
            (3, None, Retry(TwentyFiveSeconds)),
            (4, None, Exhausted),
            (1, Some(s(0)), Retry(OneSecond)),
            (1, Some(s(1)), Retry(OneSecond)),
            (2, Some(s(1)), Retry(FiveSeconds)),
            (3, Some(s(1)), Retry(TwentyFiveSeconds)),
            (3, Some(s(25)), Retry(TwentyFiveSeconds)),
            // Longer: the smallest tier that waits at least that long.
            (1, Some(ms(1_001)), Retry(FiveSeconds)),
            (1, Some(s(3)), Retry(FiveSeconds)),
            (1, Some(s(5)), Retry(FiveSeconds)),
            (1, Some(s(6)), Retry(TwentyFiveSeconds)),
            (2, Some(s(6)), Retry(TwentyFiveSeconds)),
            (2, Some(s(25)), Retry(TwentyFiveSeconds)),
            // Longer than the longest tier: capped at it, the attempt count unchanged.
            (1, Some(s(3600)), Retry(TwentyFiveSeconds)),
            (1, Some(Duration::MAX), Retry(TwentyFiveSeconds)),
            (4, Some(s(3)), Exhausted),
        ];
        for &(attempt, wait, expected) in table {
            assert_eq!(
                after_failure_with(attempt, wait),
                expected,
                "{attempt} {wait:?}"
            );
        }
    }

    #[test]
    fn delivery_id_is_stable_and_distinct() {
        let s = SourceRef {
            topic: "rewards.events".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_736_937_000_000),
        };
        let a = delivery_id(&s, "sub_1");
        // The SHA-256 of the fields as documented, computed independently: ids of records
        // already in Kafka must never change with the code that writes them.
        assert_eq!(a, "dlv_582c5c7cba5f4b8e8ceeb2840cd1c41d");
        assert_eq!(a, delivery_id(&s.clone(), "sub_1"));
        assert_eq!(a.len(), 4 + 32);
        assert_ne!(a, delivery_id(&s, "sub_2"));
        assert_ne!(
            a,
            delivery_id(
                &SourceRef {
                    offset: 42,
                    ..s.clone()
                },
                "sub_1"
            )
        );
        assert_ne!(
            a,
            delivery_id(
                &SourceRef {
                    partition: 3,
                    ..s.clone()
                },
                "sub_1"
            )
        );
        // The topic deleted and created again: the same coordinates, a later record.
        assert_ne!(
            a,
            delivery_id(
                &SourceRef {
                    timestamp_ms: Some(1_736_937_000_001),
                    ..s.clone()
                },
                "sub_1"
            )
        );
        assert_ne!(
            a,
            delivery_id(
                &SourceRef {
                    timestamp_ms: None,
                    ..s
                },
                "sub_1"
            )
        );
    }

    #[test]
    fn task_round_trips_through_json() {
        let t = DeliveryTask {
            delivery_id: "dlv_x".into(),
            subscription_id: "sub_1".into(),
            event_type: "rewards.points_awarded".into(),
            idempotency_key: "k".into(),
            body: "{\"event_type\":\"é\"}".into(),
            body_by_reference: false,
            attempt: 2,
            due_at_ms: 1,
            first_attempt_at_ms: 0,
            source: SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 5,
                timestamp_ms: None,
            },
            last_error: Some("timeout".into()),
            last_status: None,
            last_outcome: Some("timeout".into()),
            client_id: Some(None),
            failed_at_ms: Some(7),
            replay: Some(ReplayMarker {
                run_id: "rpl_1".into(),
                failed: SourceRef {
                    topic: "f".into(),
                    partition: 1,
                    offset: 2,
                    timestamp_ms: None,
                },
                replayed_at_ms: 8,
            }),
        };
        let json = serde_json::to_vec(&t).unwrap();
        assert_eq!(serde_json::from_slice::<DeliveryTask>(&json).unwrap(), t);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value["body"], "{\"event_type\":\"é\"}",
            "the body is a JSON string"
        );
        assert_eq!(
            &t.body.to_bytes()[..],
            t.body.as_bytes(),
            "request bytes = body"
        );
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn old_tasks_decode_and_the_client_field_tells_absent_from_null() {
        let old = r#"{"delivery_id":"dlv_x","subscription_id":"s","event_type":"e",
            "idempotency_key":"k","body":"{}","attempt":4,"due_at_ms":1,
            "first_attempt_at_ms":0,"source":{"topic":"t","partition":0,"offset":5},
            "last_error":"HTTP 500","last_status":500}"#;
        let t: DeliveryTask = serde_json::from_str(old).unwrap();
        assert_eq!(
            (t.client_id.clone(), t.replay.clone(), t.failed_at_ms),
            (None, None, None)
        );
        assert_eq!(t.last_outcome_or_guess(), "http_error");
        let json = serde_json::to_value(&t).unwrap();
        assert!(json.get("client_id").is_none(), "absent stays absent");
        for (client, expected) in [
            (r#"null"#, Some(None)),
            (r#""app1""#, Some(Some("app1".to_string()))),
        ] {
            let v = old.replace(r#""last_status":500"#, &format!(r#""client_id":{client}"#));
            let t: DeliveryTask = serde_json::from_str(&v).unwrap();
            assert_eq!(t.client_id, expected, "{client}");
            assert_eq!(t.last_outcome_or_guess(), "unknown");
            let back: DeliveryTask =
                serde_json::from_slice(&serde_json::to_vec(&t).unwrap()).unwrap();
            assert_eq!(back, t, "round trip keeps {client}");
        }
    }

    #[test]
    fn a_replayed_task_gets_a_fresh_budget_and_keeps_its_identity() {
        let old = r#"{"delivery_id":"dlv_x","subscription_id":"s","event_type":"e",
            "idempotency_key":"k","body":"{}","attempt":4,"due_at_ms":1,
            "first_attempt_at_ms":0,"source":{"topic":"t","partition":0,"offset":5}}"#;
        let t: DeliveryTask = serde_json::from_str(old).unwrap();
        for attempt in [0, 1, 4, 9] {
            let fresh = DeliveryTask {
                attempt,
                ..t.clone()
            }
            .with_fresh_budget(99);
            assert_eq!((fresh.attempt, fresh.due_at_ms), (1, 99));
            assert_eq!(fresh.delivery_id, "dlv_x");
            assert_eq!(fresh.first_attempt_at_ms, 0);
        }
    }
}
