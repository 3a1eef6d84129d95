//! The console's audit trail: one record on `topics.audit` for every change, every replay,
//! every test webhook, every login and logout, and every refused state change — who, what, when
//! and how it ended. Keyed by the target (a subscription id, a replay run) so its history is in
//! order in its partition. Never a secret: records are built from ids, names, fingerprints and
//! counts only, and [`AuditRecord::details`] is filled by the console's actions, which never
//! hand it a secret (`tests/console_api.rs` searches the topic for every secret it used).

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::Config;
use crate::kafka::OutputProducer;

/// One audited event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC, milliseconds.
    pub at: String,
    pub actor: String,
    pub role: &'static str,
    /// `accounts` or `proxy`.
    pub via: &'static str,
    /// The client address as the console saw it.
    pub client: String,
    /// `subscription.create`, `subscription.update`, `subscription.enable`,
    /// `subscription.disable`, `subscription.delete`, `subscription.rotate_secret`,
    /// `subscription.test_webhook`, `replay.start`, `replay.finish`, `login`, `logout`,
    /// `denied`.
    pub action: String,
    /// What it was done to: a subscription id, a replay run, a path.
    pub target: String,
    /// `ok`, `refused`, `failed`, `denied`.
    pub outcome: &'static str,
    /// Action-specific facts (the new fingerprint, counts, the selection, the error).
    pub details: serde_json::Value,
}

/// Writes audit records and waits for Kafka to acknowledge each.
pub struct Auditor {
    producer: OutputProducer,
    topic: String,
}

impl Auditor {
    pub fn new(config: &Config) -> Result<Self> {
        Ok(Auditor {
            producer: crate::kafka::producer(config)?,
            topic: config.topics.audit.clone(),
        })
    }

    pub async fn write(&self, record: &AuditRecord) -> Result<()> {
        let value = serde_json::to_vec(record).context("encoding an audit record")?;
        tracing::info!(
            actor = %record.actor,
            action = %record.action,
            target = %record.target,
            outcome = record.outcome,
            "audit"
        );
        crate::commands::produce(
            &self.producer,
            &self.topic,
            Some(&record.target),
            Some(&value),
        )
        .await
        .context("writing the audit record")
    }
}
