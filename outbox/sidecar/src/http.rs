//! `/healthz`, `/readyz` and `/metrics` (Prometheus text), and the web console (`crate::console`).

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use courier_outbox::{CircuitState, RelayState};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Binds `listen` and serves until `shutdown`; returns the bound address.
///
/// `/readyz` answers 200 while the relay publishes (idle or draining) and 503 with the reason
/// otherwise: starting, reconnecting to the database, stopped, or paused because the broker is
/// unavailable (its circuit is open; see `courier_outbox::Relay::circuit`).
pub(crate) async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    state: watch::Receiver<RelayState>,
    circuit: watch::Receiver<CircuitState>,
    console: Option<Router>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let answer = readiness(*state.borrow(), *circuit.borrow());
                async move { answer }
            }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    if let Some(console) = console {
        app = app.merge(console);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for /healthz, /readyz and /metrics"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

/// The `/readyz` answer for the relay's state and its broker circuit.
fn readiness(state: RelayState, circuit: CircuitState) -> (StatusCode, String) {
    if circuit == CircuitState::Open && state != RelayState::Stopped {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "BrokerUnavailable: the broker cannot be reached; the relay is paused and probes it \
             about every second, messages wait in the outbox and no attempts are counted\n"
                .to_owned(),
        );
    }
    match state {
        RelayState::Idle | RelayState::Draining => (StatusCode::OK, format!("{state:?}\n")),
        other => (StatusCode::SERVICE_UNAVAILABLE, format!("{other:?}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_while_the_broker_circuit_is_open() {
        let (status, body) = readiness(RelayState::Paused, CircuitState::Open);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("BrokerUnavailable:"), "{body}");
        // A probe in flight is Draining, still not ready.
        let (status, _) = readiness(RelayState::Draining, CircuitState::Open);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            readiness(RelayState::Draining, CircuitState::Closed),
            (StatusCode::OK, "Draining\n".to_owned())
        );
        assert_eq!(
            readiness(RelayState::Reconnecting, CircuitState::Closed).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
