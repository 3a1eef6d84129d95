//! What we read from librdkafka's statistics (`statistics.interval.ms`, set on every group
//! consumer by [`super::group_consumer`] and on the output producers): consumer lag, and every
//! client's requests per type and produced batch sizes. Only the fields needed are decoded, so
//! a librdkafka upgrade that adds or drops other fields does not break it.
//!
//! A partition counts when the application assigned it (`desired`) and it is a real partition
//! (not librdkafka's internal `-1`). Its lag is librdkafka's `consumer_lag` (high watermark minus
//! the group's committed offset); before the group has committed anything on it, the retained
//! records (high minus low watermark) are all still to be read, which is that number too. A
//! partition with no known watermark yet is left out until it has one.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::metrics::{ConsumerLag, KafkaClientStats};

#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    topics: BTreeMap<String, Topic>,
    #[serde(default)]
    brokers: BTreeMap<String, Broker>,
}

#[derive(Deserialize)]
struct Topic {
    #[serde(default)]
    partitions: BTreeMap<String, Partition>,
    /// Records per produced batch over the last interval.
    #[serde(default)]
    batchcnt: Option<WindowStats>,
}

#[derive(Deserialize)]
struct WindowStats {
    #[serde(default)]
    avg: f64,
    #[serde(default)]
    cnt: i64,
}

#[derive(Deserialize)]
struct Broker {
    /// Requests sent, per request type, since the client started.
    #[serde(default)]
    req: BTreeMap<String, i64>,
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
    Ok(lags_of(&serde_json::from_slice(stats)?))
}

fn lags_of(stats: &Stats) -> Vec<(String, i32, i64)> {
    let mut lags = Vec::new();
    for (name, topic) in &stats.topics {
        for p in topic.partitions.values() {
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
    lags
}

/// (broker, request type, cumulative count) and (topic, records per batch, batches) of one
/// statistics document.
#[allow(clippy::type_complexity)]
fn requests_of(stats: &Stats) -> (Vec<(String, String, i64)>, Vec<(String, f64, i64)>) {
    let requests = stats
        .brokers
        .iter()
        .flat_map(|(broker, b)| {
            b.req
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(move |(request, n)| (broker.clone(), request.clone(), *n))
        })
        .collect();
    let batches = stats
        .topics
        .iter()
        .filter_map(|(topic, t)| {
            let w = t.batchcnt.as_ref()?;
            Some((topic.clone(), w.avg, w.cnt))
        })
        .collect();
    (requests, batches)
}

/// Updates `lag` and `client` from one statistics document; an undecodable one is logged and
/// skipped.
pub fn report(stats: &[u8], lag: Option<&ConsumerLag>, client: Option<&KafkaClientStats>) {
    match serde_json::from_slice::<Stats>(stats) {
        Ok(stats) => {
            if let Some(lag) = lag {
                lag.update(&lags_of(&stats));
            }
            if let Some(client) = client {
                let (requests, batches) = requests_of(&stats);
                client.update(&requests, &batches);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "librdkafka statistics not understood; metrics not updated")
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
    fn requests_per_broker_and_batch_sizes_are_read() {
        let stats = br#"{
            "name": "p", "type": "producer",
            "brokers": {
                "127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "req": {"Produce": 40, "Metadata": 2, "Fetch": 0}},
                "GroupCoordinator": {"name": "GroupCoordinator", "req": {"OffsetCommit": 5}}
            },
            "topics": {
                "log": {"topic": "log", "batchcnt": {"min": 1, "max": 90, "avg": 41.5, "cnt": 12}, "partitions": {}},
                "idle": {"topic": "idle", "partitions": {}}
            }
        }"#;
        let (requests, batches) = requests_of(&serde_json::from_slice(stats).unwrap());
        assert_eq!(
            requests,
            vec![
                ("127.0.0.1:9092/1".into(), "Metadata".into(), 2),
                ("127.0.0.1:9092/1".into(), "Produce".into(), 40),
                ("GroupCoordinator".into(), "OffsetCommit".into(), 5),
            ]
        );
        assert_eq!(batches, vec![("log".to_string(), 41.5, 12)]);
    }

    #[test]
    fn documents_without_topics_report_nothing_and_garbage_is_an_error() {
        assert!(consumer_lags(br#"{"name":"p","type":"producer"}"#)
            .unwrap()
            .is_empty());
        assert!(consumer_lags(b"not json").is_err());
    }
}
