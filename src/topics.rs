//! Topic setup: every topic of SPEC §2 with its policy. The subscriptions topic is compacted; the
//! delivery-log and failed topics keep records for `topic_setup.long_retention_ms`; the rest use
//! `delete` with `topic_setup.retention_ms`, except the console's audit topic (one partition,
//! `topic_setup.audit_retention_ms`). Creating an existing topic is harmless: it is
//! reported as existing, and a policy that differs from ours is reported, never altered.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::kafka;

/// One topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: Vec<(&'static str, String)>,
}

/// What setup did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupOutcome {
    Created,
    Existed,
    /// The topic exists with a different value for one of our settings: (key, wanted, actual).
    ExistedWithDifferences(Vec<(String, String, String)>),
}

/// The topics of the product with their policies (pure: derived from the config).
pub fn specs(config: &Config) -> Vec<TopicSpec> {
    let t = &config.topics;
    let s = &config.topic_setup;
    let delete = |retention: i64| {
        vec![
            ("cleanup.policy", "delete".to_string()),
            ("retention.ms", retention.to_string()),
        ]
    };
    let spec = |name: &str, partitions: i32, configs| TopicSpec {
        name: name.to_string(),
        partitions,
        replication_factor: s.replication_factor,
        configs,
    };
    vec![
        spec(&t.events, s.partitions, delete(s.retention_ms)),
        spec(
            &t.subscriptions,
            s.subscription_partitions,
            vec![
                ("cleanup.policy", "compact".to_string()),
                // Tombstones stay a day so a reader that was down for hours still sees deletes.
                ("delete.retention.ms", "86400000".to_string()),
            ],
        ),
        spec(&t.retry_1s, s.partitions, delete(s.retention_ms)),
        spec(&t.retry_5s, s.partitions, delete(s.retention_ms)),
        spec(&t.retry_25s, s.partitions, delete(s.retention_ms)),
        spec(&t.replay, s.partitions, delete(s.retention_ms)),
        spec(&t.delivery_log, s.partitions, delete(s.long_retention_ms)),
        spec(&t.failed, s.partitions, delete(s.long_retention_ms)),
        spec(&t.invalid, s.partitions, delete(s.retention_ms)),
        // One partition: the audit trail is read in the order things happened.
        spec(&t.audit, 1, delete(s.audit_retention_ms)),
    ]
}

/// Creates every topic that does not exist yet and checks the policy of those that do.
pub async fn setup(config: &Config) -> Result<Vec<(String, SetupOutcome)>> {
    let admin = kafka::admin(config)?;
    let specs = specs(config);
    let new_topics: Vec<NewTopic> = specs
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication_factor),
            );
            for (k, v) in &s.configs {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(kafka::METADATA_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &opts)
        .await
        .context("creating topics")?;
    let mut outcomes = Vec::new();
    let mut existing = Vec::new();
    for (spec, result) in specs.iter().zip(results) {
        match result {
            Ok(_) => outcomes.push((spec.name.clone(), SetupOutcome::Created)),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(spec),
            Err((name, code)) => return Err(anyhow!("creating topic {name:?} failed: {code}")),
        }
    }
    if !existing.is_empty() {
        let resources: Vec<ResourceSpecifier> = existing
            .iter()
            .map(|s| ResourceSpecifier::Topic(&s.name))
            .collect();
        let described = admin
            .describe_configs(&resources, &opts)
            .await
            .context("describing existing topics")?;
        for (spec, result) in existing.iter().zip(described) {
            let resource = result.map_err(|e| anyhow!("describing topic {:?}: {e}", spec.name))?;
            let actual: HashMap<&str, Option<&str>> = resource
                .entries
                .iter()
                .map(|e| (e.name.as_str(), e.value.as_deref()))
                .collect();
            let diffs: Vec<(String, String, String)> = spec
                .configs
                .iter()
                .filter_map(|(k, want)| {
                    let got = actual.get(k).copied().flatten().unwrap_or("");
                    (got != want).then(|| (k.to_string(), want.clone(), got.to_string()))
                })
                .collect();
            let outcome = if diffs.is_empty() {
                SetupOutcome::Existed
            } else {
                SetupOutcome::ExistedWithDifferences(diffs)
            };
            outcomes.push((spec.name.clone(), outcome));
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_its_policy() {
        let specs = specs(&Config::default());
        assert_eq!(specs.len(), 10);
        let audit = specs.iter().find(|s| s.name == "webhooks.audit").unwrap();
        assert_eq!(audit.partitions, 1);
        assert!(audit
            .configs
            .contains(&("retention.ms", "31536000000".into())));
        let policy = |name: &str| {
            let s = specs.iter().find(|s| s.name == name).unwrap();
            s.configs
                .iter()
                .find(|(k, _)| *k == "cleanup.policy")
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(policy("webhooks.subscriptions"), "compact");
        for t in [
            "rewards.events",
            "webhooks.retry.25s",
            "webhooks.failed",
            "webhooks.invalid",
        ] {
            assert_eq!(policy(t), "delete", "{t}");
        }
        let long = specs
            .iter()
            .find(|s| s.name == "webhooks.delivery-log")
            .unwrap();
        assert!(long
            .configs
            .contains(&("retention.ms", "2592000000".into())));
    }
}
