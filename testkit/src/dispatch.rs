//! A [`Dispatcher`] that hands every matched event to the test (through a channel) instead of
//! delivering it, so a test can assert on matching alone. Due tasks are accepted and dropped.

use std::sync::Arc;

use mgpass_webhooks::delivery::DeliveryTask;
use mgpass_webhooks::dispatch::Dispatcher;
use mgpass_webhooks::events::RewardsEvent;
use mgpass_webhooks::kafka::SourceRef;
use mgpass_webhooks::subscriptions::Subscription;

/// What a [`ChannelDispatcher`] saw for one event.
pub type Dispatched = (SourceRef, Arc<RewardsEvent>, Vec<Arc<Subscription>>);

/// A dispatcher that hands every event to the test.
pub struct ChannelDispatcher(pub tokio::sync::mpsc::UnboundedSender<Dispatched>);

impl Dispatcher for ChannelDispatcher {
    async fn dispatch_event(
        &self,
        source: SourceRef,
        event: Arc<RewardsEvent>,
        subscriptions: Vec<Arc<Subscription>>,
    ) -> anyhow::Result<()> {
        let _ = self.0.send((source, event, subscriptions));
        Ok(())
    }

    async fn dispatch_task(&self, _task: DeliveryTask) -> anyhow::Result<()> {
        Ok(())
    }
}
