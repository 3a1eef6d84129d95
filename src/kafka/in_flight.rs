//! The bounded set of records a consumer loop has handed to concurrent tasks, each released for
//! commit through the contiguous-prefix [`OffsetTracker`] when its work succeeded.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::consumer::StreamConsumer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use super::consumer::{store, RebalanceContext};
use super::offsets::{OffsetTracker, Token};

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
    pub fn new(consumer: Arc<StreamConsumer<RebalanceContext>>, limit: usize) -> Self {
        InFlight {
            consumer,
            tracker: Arc::new(OffsetTracker::new()),
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

    /// Waits for a free slot, then runs `work` for the record of `token` in its own task.
    pub async fn spawn(
        &self,
        token: Token,
        work: impl Future<Output = Result<()>> + Send + 'static,
    ) -> Result<()> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("in-flight limit closed")?;
        let tracker = self.tracker.clone();
        let consumer = self.consumer.clone();
        let failure = self.failure.clone();
        let first_error = self.first_error.clone();
        self.tasks.spawn(async move {
            match work.await {
                Ok(()) => {
                    if let Some(commit) = tracker.complete(token) {
                        store(&consumer, &commit);
                    }
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "record handling failed; stopping");
                    first_error
                        .lock()
                        .expect("error slot poisoned")
                        .get_or_insert(e);
                    failure.cancel();
                }
            }
            drop(permit);
        });
        Ok(())
    }

    /// Releases a record that needed no work (skipped as unusable after logging).
    pub fn complete_now(&self, token: Token) {
        if let Some(commit) = self.tracker.complete(token) {
            store(&self.consumer, &commit);
        }
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
        match self.first_error.lock().expect("error slot poisoned").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
