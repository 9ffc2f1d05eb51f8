//! `/healthz`, `/readyz` and `/metrics` (Prometheus text).

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use courier_outbox::RelayState;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Binds `listen` and serves until `shutdown`; returns the bound address.
pub(crate) async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    state: watch::Receiver<RelayState>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let state = *state.borrow();
                async move {
                    match state {
                        RelayState::Idle | RelayState::Draining => {
                            (StatusCode::OK, format!("{state:?}\n"))
                        }
                        other => (StatusCode::SERVICE_UNAVAILABLE, format!("{other:?}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
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
