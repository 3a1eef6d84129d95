//! The small admin HTTP server: `/livez` (depends on nothing external: the process is alive and
//! serving), `/readyz` (the subscription table is loaded, the event consumer is running and no
//! supervised task has stopped, and the Kafka cluster answers) and `/metrics` (Prometheus text
//! format).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::subscriptions::SubscriptionTable;

/// What readiness depends on.
pub struct Health {
    pub table: Arc<SubscriptionTable>,
    /// Set while the event consumer is running.
    pub consuming: AtomicBool,
    /// Cleared while the Kafka cluster does not answer (see [`crate::kafka::watch_reachable`]).
    pub kafka_reachable: AtomicBool,
    /// Cancelled once any supervised task stopped (or shutdown began): not ready from then on.
    stopping: CancellationToken,
}

impl Health {
    pub fn new(table: Arc<SubscriptionTable>, stopping: CancellationToken) -> Self {
        Health {
            table,
            consuming: AtomicBool::new(false),
            // The processor starts only after a broker answered.
            kafka_reachable: AtomicBool::new(true),
            stopping,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.table.is_ready()
            && self.consuming.load(Ordering::Relaxed)
            && self.kafka_reachable.load(Ordering::Relaxed)
            && !self.stopping.is_cancelled()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds `addr` and serves until `cancel` fires. Returns the bound address via `bound`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cancel: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin.listen: cannot bind {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "admin server listening");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .context("admin server failed")
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if !s.health.table.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading subscriptions\n")
    } else if !s.health.kafka_reachable.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "kafka unreachable\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "consumer not running\n")
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.set_ready(s.health.is_ready());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_the_table_loaded_consuming_and_not_stopping() {
        let table = Arc::new(SubscriptionTable::new());
        let stopping = CancellationToken::new();
        let health = Health::new(table.clone(), stopping.clone());
        assert!(!health.is_ready(), "nothing loaded");
        table.set_ready();
        assert!(!health.is_ready(), "not consuming yet");
        health.consuming.store(true, Ordering::Relaxed);
        assert!(health.is_ready());
        health.kafka_reachable.store(false, Ordering::Relaxed);
        assert!(!health.is_ready(), "Kafka away");
        health.kafka_reachable.store(true, Ordering::Relaxed);
        assert!(health.is_ready(), "Kafka back");
        stopping.cancel();
        assert!(
            !health.is_ready(),
            "a stopped task or shutdown turns readiness off"
        );
    }
}
