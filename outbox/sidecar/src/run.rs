//! `outbox-relay run`: drain the outbox to the broker until SIGTERM or SIGINT.

use std::time::Duration;

use anyhow::Context;
use courier_outbox::{Backoff, PublishBatch, Relay, Store};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::Pool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{console, database, http, publisher};

pub(crate) async fn run(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the Prometheus metrics recorder")?;
    let database = database::connect(config).await?;
    if !wait_for_migrations(&database, config.migrations_wait(), &shutdown).await? {
        return Ok(());
    }
    let publisher = publisher::connect(config).await?;
    let console_database = config.console.enabled.then(|| database.clone());
    database::with_pool!(database, |pool| drain(
        config,
        pool,
        publisher,
        metrics,
        console_database,
        shutdown
    )
    .await)
}

/// Builds the relay on `pool`'s store and runs it until `shutdown`, one publish call per claimed
/// batch.
async fn drain<DB: Store, P: PublishBatch + Clone + Send + 'static>(
    config: &Config,
    pool: Pool<DB>,
    publisher: P,
    metrics: PrometheusHandle,
    console_database: Option<database::Database>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = &config.relay;
    let mut builder = Relay::batch_builder(pool, publisher)
        .name(settings.name.clone())
        .batch_size(settings.batch_size)
        .max_attempts(settings.max_attempts)
        .poll_interval(Duration::from_millis(settings.poll_interval_ms))
        .publish_timeout(Duration::from_millis(settings.publish_timeout_ms))
        .shutdown_grace(Duration::from_millis(settings.shutdown_grace_ms))
        .session_timeout(Duration::from_millis(settings.session_timeout_ms))
        .backoff(Backoff {
            base: Duration::from_millis(settings.backoff_base_ms),
            max: Duration::from_millis(settings.backoff_max_ms),
            ..Backoff::default()
        });
    if let Some(hours) = settings.retention_hours {
        builder = builder.retention(Duration::from_secs(hours * 3600));
    }
    let relay = builder.build()?;

    if let Some(listen) = config.http_listen()? {
        let console = match console_database {
            Some(database) => Some(console::router(std::sync::Arc::new(console::Console::new(
                config,
                database,
                Some((relay.state(), relay.circuit())),
                metrics.clone(),
                listen.ip().is_loopback(),
            )?))),
            None => None,
        };
        let bound = http::serve(
            listen,
            metrics,
            relay.state(),
            relay.circuit(),
            console,
            shutdown.clone(),
        )
        .await?;
        tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
        println!("outbox-relay http on {bound}");
    }
    tracing::info!(broker = %config.broker.addresses, "outbox relay running");
    relay.run(shutdown).await?;
    tracing::info!("outbox relay stopped");
    Ok(())
}

/// How often `run` looks for the outbox tables while it waits for them.
const MIGRATIONS_RECHECK: Duration = Duration::from_secs(2);

/// Waits until the outbox tables exist, saying so at each look, for at most `patience`: a sidecar
/// usually starts beside its service, which creates them when it starts. `Ok(false)` when
/// `shutdown` came first.
async fn wait_for_migrations(
    database: &database::Database,
    patience: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + patience;
    let mut waited = false;
    loop {
        let missing = match database::ensure_migrated(database).await {
            Ok(()) => {
                if waited {
                    tracing::info!("the outbox tables are there: starting the relay");
                }
                return Ok(true);
            }
            Err(missing) => missing,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(missing.context(format!(
                "the outbox tables did not appear within {} s (relay.migrations_wait_ms): start \
                 the service, which creates them when it starts, or create them with \
                 `outbox-relay migrate`",
                patience.as_secs()
            )));
        }
        tracing::info!(
            "waiting for the outbox tables ({} s left): the service creates them when it \
             starts, or run `outbox-relay migrate`",
            (deadline - now).as_secs()
        );
        waited = true;
        let pause = MIGRATIONS_RECHECK.min(deadline - now);
        if shutdown
            .run_until_cancelled(tokio::time::sleep(pause))
            .await
            .is_none()
        {
            return Ok(false);
        }
    }
}
