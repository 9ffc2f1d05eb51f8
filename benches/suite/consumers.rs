//! Scenario 10, consumer throughput through each broker's delivery source with the idempotency
//! layer on Postgres (issue 14): broker-lite (embedded, SYNC_FLUSH), NATS JetStream and RabbitMQ,
//! side by side in one run. Each broker is filled first (a backlog of `idempotency_count`
//! messages through the adapter's own publisher, pipelined), then drained by the consumer runtime
//! (64 in flight) into scenario 5's handler (one effect row per delivery in the layer's
//! transaction), once with the unbatched layer and once batched (128 x 2 workers). Source,
//! publisher and topology come from the broker's address (`BrokerAddress`), as in the
//! quickstart: the same code for every broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker_lite::embedded::{self, EmbeddedConfig};
use broker_lite::storage::FlushMode;
use courier::middleware::{BrokerAddress, Consumer, IdempotencyLayer, Subscription};
use courier::outbox::Message;
use futures::StreamExt;
use sqlx::{Executor, PgPool};
use tokio_util::sync::CancellationToken;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::Params;
use crate::report::Report;

pub(crate) const SCENARIO: &str = "10. Consumer throughput through each broker's source, idempotency layer on Postgres (64 in flight, one row per delivery)";
/// Publishes outstanding while filling a broker.
const IN_FLIGHT: usize = 64;

/// The brokers to run, by address; `None` for one that did not answer (skipped).
pub(crate) struct Brokers {
    pub(crate) nats: Option<String>,
    pub(crate) rabbitmq: Option<String>,
}

pub(crate) async fn run(
    pool: &PgPool,
    brokers: &Brokers,
    params: &Params,
    report: &mut Report,
) -> anyhow::Result<()> {
    let count = params.idempotency_count;
    // broker-lite in this process, durable on ack as the relay's default target.
    let dir = tempfile::tempdir()?;
    let mut config = EmbeddedConfig::default();
    config.broker.store.flush_mode = FlushMode::Sync;
    let embedded = embedded::start(dir.path(), config).await?;
    let mut addresses = vec![(
        "broker-lite",
        BrokerAddress::BrokerLite(embedded.addr().to_string()),
    )];
    if let Some(url) = &brokers.nats {
        addresses.push(("NATS JetStream", url.parse()?));
    }
    if let Some(url) = &brokers.rabbitmq {
        addresses.push(("RabbitMQ", url.parse()?));
    }
    for (name, address) in &addresses {
        for batched in [false, true] {
            let topic = run_name("BENCH_CONSUME");
            if matches!(address, BrokerAddress::BrokerLite(_)) {
                embedded.broker().create_topic(&topic, 4).await?;
            }
            let subscription = Subscription::new(topic.clone(), format!("{topic}-group"));
            let rate = consume(pool, address, &subscription, count, batched)
                .await
                .with_context(|| format!("consuming through {name}"));
            let _ = address.remove_provisioned(&subscription).await;
            let layer = if batched {
                "batched 128 x 2 workers"
            } else {
                "unbatched"
            };
            report.add(
                SCENARIO,
                &format!("{name} source, idempotency layer {layer}"),
                "deliveries/s",
                rate?,
            );
        }
    }
    embedded.shutdown().await?;
    Ok(())
}

/// A name of this run's own, so that no stream or queue of an earlier run is met.
fn run_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{prefix}_{:x}", nanos & 0xffff_ffff_ffff)
}

/// Counts the handled deliveries, whatever the layer answered.
fn counter<R>(handled: &Arc<AtomicUsize>) -> impl FnOnce(R) + Clone + Send + 'static {
    let handled = handled.clone();
    move |_| {
        handled.fetch_add(1, Ordering::Relaxed);
    }
}

/// Fills the subscription's topic with `count` messages, then times the consumer draining it.
async fn consume(
    pool: &PgPool,
    address: &BrokerAddress,
    subscription: &Subscription,
    count: usize,
    batched: bool,
) -> anyhow::Result<f64> {
    pool.execute("TRUNCATE effects, courier_inbox.processed")
        .await?;
    // Subscribing provisions the stream or queues the messages go to.
    let source = address
        .subscribe(subscription)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let publisher = address
        .publisher()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let payload = "x".repeat(crate::enqueue::PAYLOAD);
    let published: Vec<_> = futures::stream::iter(0..count)
        .map(|n| {
            let message = Message::new(subscription.topic(), payload.clone())
                .with_key(format!("key-{}", n % 1024));
            publisher.clone().oneshot(message)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let failed = published.iter().filter(|p| p.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} of {count} publishes failed");

    let handled = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(pool.clone());
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = if batched {
        let handler = ServiceBuilder::new()
            .map_response(counter(&handled))
            .service(
                layer
                    .batched(128)
                    .workers(2)
                    .layer(crate::idempotency::handler()),
            );
        let consumer = Consumer::builder(source, handler)
            .concurrency(64)
            .batch_size(32)
            .poll_wait(Duration::from_millis(200))
            .declare_idempotent()
            .build();
        tokio::spawn(consumer.run(shutdown.clone()))
    } else {
        let handler = ServiceBuilder::new()
            .map_response(counter(&handled))
            .service(layer.layer(crate::idempotency::handler()));
        let consumer = Consumer::builder(source, handler)
            .concurrency(64)
            .batch_size(32)
            .poll_wait(Duration::from_millis(200))
            .declare_idempotent()
            .build();
        tokio::spawn(consumer.run(shutdown.clone()))
    };
    let deadline = started + Duration::from_secs(120);
    while handled.load(Ordering::Relaxed) < count {
        anyhow::ensure!(
            Instant::now() < deadline && !running.is_finished(),
            "the consumer stopped at {} of {count}",
            handled.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    shutdown.cancel();
    running.await?;
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(effects == count as i64, "{effects} effects of {count}");
    Ok(count as f64 / took.as_secs_f64())
}
