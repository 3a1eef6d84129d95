//! Consumer lag from librdkafka's statistics (`statistics.interval.ms`, set on every group
//! consumer by [`super::group_consumer`]). Only the fields needed are decoded, so a
//! librdkafka upgrade that adds or drops other fields does not break it.
//!
//! A partition counts when the application assigned it (`desired`) and it is a real partition
//! (not librdkafka's internal `-1`). Its lag is librdkafka's `consumer_lag` (high watermark minus
//! the group's committed offset); before the group has committed anything on it, the retained
//! records (high minus low watermark) are all still to be read, which is that number too. A
//! partition with no known watermark yet is left out until it has one.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::metrics::ConsumerLag;

#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    topics: BTreeMap<String, Topic>,
}

#[derive(Deserialize)]
struct Topic {
    #[serde(default)]
    partitions: BTreeMap<String, Partition>,
}

#[derive(Deserialize)]
struct Partition {
    partition: i32,
    #[serde(default)]
    desired: bool,
    #[serde(default = "unknown")]
    consumer_lag: i64,
    #[serde(default = "unknown")]
    hi_offset: i64,
    #[serde(default = "unknown")]
    lo_offset: i64,
}

fn unknown() -> i64 {
    -1
}

/// (topic, partition, lag) of every assigned partition in one statistics document.
pub fn consumer_lags(stats: &[u8]) -> Result<Vec<(String, i32, i64)>, serde_json::Error> {
    let stats: Stats = serde_json::from_slice(stats)?;
    let mut lags = Vec::new();
    for (name, topic) in stats.topics {
        for p in topic.partitions.into_values() {
            if p.partition < 0 || !p.desired {
                continue;
            }
            let lag = if p.consumer_lag >= 0 {
                p.consumer_lag
            } else if p.hi_offset >= 0 && p.lo_offset >= 0 {
                p.hi_offset - p.lo_offset
            } else {
                continue;
            };
            lags.push((name.clone(), p.partition, lag));
        }
    }
    Ok(lags)
}

/// Updates `lag` from one statistics document; an undecodable one is logged and skipped.
pub fn report(stats: &[u8], lag: &ConsumerLag) {
    match consumer_lags(stats) {
        Ok(lags) => lag.update(&lags),
        Err(e) => {
            tracing::warn!(error = %e, "librdkafka statistics not understood; lag not updated")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_partitions_report_their_lag() {
        let stats = br#"{
            "name": "c", "type": "consumer",
            "brokers": {"b": {"name": "b"}},
            "topics": {
                "events": {"topic": "events", "partitions": {
                    "0": {"partition": 0, "desired": true, "consumer_lag": 12, "hi_offset": 40, "lo_offset": 0},
                    "1": {"partition": 1, "desired": true, "consumer_lag": -1, "hi_offset": 9, "lo_offset": 2},
                    "2": {"partition": 2, "desired": false, "consumer_lag": -1, "hi_offset": 5, "lo_offset": 0},
                    "3": {"partition": 3, "desired": true, "consumer_lag": -1, "hi_offset": -1, "lo_offset": -1},
                    "-1": {"partition": -1, "desired": false, "consumer_lag": -1}
                }},
                "retry": {"topic": "retry", "partitions": {
                    "0": {"partition": 0, "desired": true, "consumer_lag": 0}
                }}
            }
        }"#;
        let table = [
            ("events", 0, 12), // committed: librdkafka's lag
            ("events", 1, 7),  // nothing committed yet: every retained record
            ("retry", 0, 0),
        ];
        let expected: Vec<_> = table
            .iter()
            .map(|(t, p, l)| (t.to_string(), *p, *l))
            .collect();
        assert_eq!(consumer_lags(stats).unwrap(), expected);
    }

    #[test]
    fn documents_without_topics_report_nothing_and_garbage_is_an_error() {
        assert!(consumer_lags(br#"{"name":"p","type":"producer"}"#)
            .unwrap()
            .is_empty());
        assert!(consumer_lags(b"not json").is_err());
    }
}
