//! The bounded set of records a consumer loop has handed to concurrent tasks, each released for
//! commit through the contiguous-prefix [`OffsetTracker`] when its work succeeded.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use super::consumer::{store, RebalanceContext};
use super::offsets::{OffsetTracker, Token};

/// One slot of the in-flight budget.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
}

/// The text of a panic payload.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into())
}

/// The records a consumer loop has handed to concurrent tasks: bounded in number, each released
/// for commit through the [`OffsetTracker`] when its work succeeded. The first error is kept and
/// cancels [`InFlight::failed`]; that record's offset is never released, so it is re-read.
pub struct InFlight {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    tracker: Arc<OffsetTracker>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    failure: CancellationToken,
    first_error: Arc<Mutex<Option<anyhow::Error>>>,
}

impl InFlight {
    /// The in-flight set of `consumer`, sharing its context's offset tracker.
    pub fn new(consumer: Arc<StreamConsumer<RebalanceContext>>, limit: usize) -> Self {
        InFlight {
            tracker: consumer.context().tracker().clone(),
            consumer,
            permits: Arc::new(Semaphore::new(limit)),
            tasks: TaskTracker::new(),
            failure: CancellationToken::new(),
            first_error: Arc::new(Mutex::new(None)),
        }
    }

    pub fn tracker(&self) -> &OffsetTracker {
        &self.tracker
    }

    /// Cancelled once some record's work failed.
    pub fn failed(&self) -> &CancellationToken {
        &self.failure
    }

    /// Waits for a free slot. Cancel-safe: consume loops select on it together with their
    /// cancellation and rebalance events, so a full budget never hides either.
    pub async fn permit(&self) -> Result<Permit> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("in-flight limit closed")?;
        Ok(Permit { _slot: permit })
    }

    /// A free slot, if there is one now.
    pub fn try_permit(&self) -> Option<Permit> {
        let slot = self.permits.clone().try_acquire_owned().ok()?;
        Some(Permit { _slot: slot })
    }

    /// Runs `work` for the record of `token` in its own task, holding `permit` until it ends.
    /// A panic in `work` counts as its error: the loop stops and the record is re-read.
    pub fn spawn(
        &self,
        permit: Permit,
        token: Token,
        work: impl Future<Output = Result<()>> + Send + 'static,
    ) {
        let tracker = self.tracker.clone();
        let consumer = self.consumer.clone();
        let failure = self.failure.clone();
        let first_error = self.first_error.clone();
        let (topic, partition) = (token.topic_name(), token.partition());
        consumer.context().started(&topic, partition);
        self.tasks.spawn(async move {
            let result = match AssertUnwindSafe(work).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(anyhow!(
                    "record handling panicked: {}",
                    panic_text(panic.as_ref())
                )),
            };
            match result {
                Ok(()) => {
                    tracker.complete_with(token, |commit| store(&consumer, commit));
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "record handling failed; stopping");
                    first_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(e);
                    failure.cancel();
                }
            }
            consumer.context().ended(&topic, partition);
            drop(permit);
        });
    }

    /// Releases a record that needed no work (skipped as unusable after logging).
    pub fn complete_now(&self, token: Token) {
        self.tracker
            .complete_with(token, |commit| store(&self.consumer, commit));
    }

    /// Lets in-flight work finish within `deadline`, then returns the first error, if any.
    pub async fn finish(self, deadline: Duration) -> Result<()> {
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                in_flight = self.tracker.in_flight_total(),
                "shutdown deadline passed; unfinished records will be re-read after restart"
            );
        }
        match self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
