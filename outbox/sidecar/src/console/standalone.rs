//! `outbox-relay console`: the console alone, without relaying, for an application that runs
//! the relay in its own process (an embedded `courier_outbox::Relay`). It reads the same tables
//! and the same broker; the relay's state and circuit are on that process's own endpoints.

use std::sync::Arc;

use anyhow::{Context, bail};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

use super::{Console, router};
use crate::config::Config;
use crate::database;

/// Serves the console on `http.listen` until `shutdown`.
pub(crate) async fn serve_only(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(listen) = config.http_listen()? else {
        bail!(
            "http.listen is \"off\": give the console an address, e.g. --http-listen 127.0.0.1:9400"
        );
    };
    let database = database::connect(config).await?;
    database::ensure_migrated(&database).await?;
    // No relay here, so nothing is counted: an unregistered recorder renders empty metrics.
    let metrics = PrometheusBuilder::new().build_recorder().handle();
    let console = Console::new(config, database, None, metrics, listen.ip().is_loopback())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the console"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "serving the console (console-only mode, no relaying)");
    println!("outbox-relay console on {bound}");
    axum::serve(listener, router(Arc::new(console)))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the console's HTTP server stopped")
}
