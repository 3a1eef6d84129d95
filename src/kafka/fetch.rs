//! Reading one record again by its coordinates: the source event of a delivery task whose body
//! was too large to travel in the task record (see `delivery::engine`). A group-less reader,
//! created on first use and shared behind a lock; a rare path, not a hot one.
//!
//! A record that is no longer retained (its offset is below the partition's start, or the
//! offset was compacted away) is reported as [`Fetched::Gone`], never waited for.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Mutex;

use super::{reader, ReaderContext, SourceRef};
use crate::config::Config;

/// How long one fetch may wait for its record before it counts as a transient failure.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one fetch.
#[derive(Debug)]
pub enum Fetched {
    Record(OwnedMessage),
    /// Not retained any more: nothing at that offset will ever be read.
    Gone,
}

pub struct RecordFetcher {
    config: Config,
    consumer: Mutex<Option<StreamConsumer<ReaderContext>>>,
}

impl RecordFetcher {
    pub fn new(config: &Config) -> Self {
        RecordFetcher {
            config: config.clone(),
            consumer: Mutex::new(None),
        }
    }

    /// Reads the record at `source`. An error is transient (the broker did not answer in time);
    /// the caller may try again.
    pub async fn fetch(&self, source: &SourceRef) -> Result<Fetched> {
        let mut slot = self.consumer.lock().await;
        if slot.is_none() {
            let mut c = self.config.clone();
            // One record at a time: a small prefetch buffer.
            c.kafka
                .properties
                .entry("queued.max.messages.kbytes".into())
                .or_insert_with(|| "16384".into());
            *slot = Some(reader(&c, "source-fetch")?);
        }
        let consumer = slot.as_ref().expect("just created");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &source.topic,
            source.partition,
            Offset::Offset(source.offset),
        )
        .context("building the fetch assignment")?;
        consumer
            .assign(&tpl)
            .with_context(|| format!("assigning {}/{}", source.topic, source.partition))?;
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .with_context(|| {
                    format!(
                        "no record from {}/{} offset {} within {FETCH_TIMEOUT:?}",
                        source.topic, source.partition, source.offset
                    )
                })?;
            match msg {
                Ok(m) if m.offset() == source.offset => return Ok(Fetched::Record(m.detach())),
                // The reader starts at the earliest retained offset when ours is gone.
                Ok(m) if m.offset() > source.offset => return Ok(Fetched::Gone),
                Ok(_) => continue,
                // The end came before the offset: nothing is there.
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => return Ok(Fetched::Gone),
                Err(e) => return Err(e).context("fetching the source record"),
            }
        }
    }
}
