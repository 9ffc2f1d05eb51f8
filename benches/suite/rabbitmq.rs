//! Scenario 7, RabbitMQ through courier: the relay draining a Postgres backlog into RabbitMQ with
//! `RabbitMqPublisher` (confirms, mandatory, persistent, message id) beside a hand-written lapin
//! loop publishing the same messages with the same guarantees and the same pipelining (64
//! confirms outstanding, each awaited, a returned message counted as a failure); and consumer
//! throughput through `RabbitMqSource` with the idempotency layer, beside a hand-written lapin
//! consume-and-ack loop with the same prefetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use courier::middleware::{
    Consumer, IdempotencyLayer, QueueSpec, RabbitMqPublisher, RabbitMqSource, RabbitMqSourceConfig,
    RabbitMqTopology,
};
use courier::outbox::{Message, RelayState};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ConnectionProperties};
use sqlx::{Executor, PgPool};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Layer, ServiceBuilder};

use crate::Params;
use crate::relay::{Counted, mark_published, spawn_batch_relay, spawn_relay};
use crate::report::Report;

pub(crate) const SCENARIO: &str = "7. RabbitMQ: relay drain and consumer throughput (quorum queues, confirms, 256-byte payloads, 1024 keys)";
/// The relay's default `max_in_flight`, and the hand loop's confirms outstanding.
const IN_FLIGHT: usize = 64;
/// The outbox backlog's topic, so the exchange.
const EXCHANGE: &str = "bench";
const DRAIN_QUEUE: &str = "courier.bench.drain";
const CONSUME_QUEUE: &str = "courier.bench.consume";
/// Deliveries unacked per consumer, for the source and for the hand-written consumer.
const PREFETCH: u16 = 256;

pub(crate) async fn run(
    pool: &PgPool,
    url: &str,
    params: &Params,
    report: &mut Report,
) -> anyhow::Result<()> {
    let backlog = params.backlog;
    let size = format!("{}k", backlog / 1000);
    let relay = relay_drain(pool, url, backlog, params, false).await?;
    let batched = relay_drain(pool, url, backlog, params, true).await?;
    let hand = hand_publish(url, DRAIN_QUEUE, backlog).await?;
    let relay_label = format!("relay → RabbitMQ, 1 relay, {size} backlog");
    let batch_label = format!("relay → RabbitMQ, batch publish, 1 relay, {size} backlog");
    report.add(SCENARIO, &relay_label, "msg/s", relay);
    report.add(SCENARIO, &batch_label, "msg/s", batched);
    report.add(
        SCENARIO,
        &format!("{batch_label} / hand-written loop"),
        "x",
        batched / hand,
    );
    report.add(
        SCENARIO,
        &format!("hand-written lapin loop, {IN_FLIGHT} confirms in flight, {size} messages"),
        "msg/s",
        hand,
    );
    report.add(
        SCENARIO,
        &format!("{relay_label} / hand-written loop"),
        "x",
        relay / hand,
    );
    // Where the gap is: the publisher alone (its channel pool, one confirm per channel), no outbox.
    fresh_queue(url, DRAIN_QUEUE).await?;
    let alone = hand_publish_into_existing(url, backlog).await?;
    report.add(
        SCENARIO,
        &format!("RabbitMqPublisher alone, {IN_FLIGHT} in flight, {size} messages"),
        "msg/s",
        alone,
    );

    let count = params.idempotency_count;
    let through_source = consume_through_source(pool, url, count).await?;
    let by_hand = consume_by_hand(url, count).await?;
    let label = "consumer: RabbitMqSource + idempotency layer (batched 128 x 2), 64 in flight";
    report.add(SCENARIO, label, "deliveries/s", through_source);
    report.add(
        SCENARIO,
        "consumer: hand-written lapin consume + ack, no handler",
        "deliveries/s",
        by_hand,
    );
    report.add(
        SCENARIO,
        "consumer: source + idempotency / hand-written consume",
        "x",
        through_source / by_hand,
    );
    cleanup(url).await;
    Ok(())
}

/// A fresh durable quorum queue `queue` bound to the exchange for everything.
async fn fresh_queue(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = lapin::Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let _ = channel
        .queue_delete(queue, QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "bye").await;
    RabbitMqTopology::new()
        .exchange(EXCHANGE)
        .queue(QueueSpec::new(queue))
        .bind(queue, EXCHANGE, "#")
        .declare(url)
        .await?;
    Ok(())
}

async fn cleanup(url: &str) {
    let Ok(connection) = lapin::Connection::connect(url, ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let queue = RabbitMqSourceConfig::new(CONSUME_QUEUE);
        let mut queues = vec![DRAIN_QUEUE.to_owned()];
        queues.extend(
            queue
                .topology()
                .queues()
                .iter()
                .map(|q| q.name().to_owned()),
        );
        for queue in queues {
            let _ = channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(EXCHANGE, ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "bye").await;
}

/// The relay drains `backlog` outbox rows into RabbitMQ; msg/s from the insert of the backlog to
/// the last confirm and the relay idle again.
async fn relay_drain(
    pool: &PgPool,
    url: &str,
    backlog: usize,
    params: &Params,
    batch: bool,
) -> anyhow::Result<f64> {
    fresh_queue(url, DRAIN_QUEUE).await?;
    sqlx::query("TRUNCATE outbox.messages")
        .execute(pool)
        .await?;
    let stored = Arc::new(AtomicUsize::new(0));
    let rabbit = RabbitMqPublisher::connect(url).await?;
    let counted = {
        let stored = stored.clone();
        ServiceBuilder::new()
            .map_response(move |()| {
                stored.fetch_add(1, Ordering::Relaxed);
                mark_published();
            })
            .service(rabbit)
    };
    let shutdown = CancellationToken::new();
    let (task, mut state) = if batch {
        let publisher = Counted {
            inner: RabbitMqPublisher::connect(url).await?,
            stored: stored.clone(),
        };
        spawn_batch_relay(
            pool,
            publisher,
            "bench-relay-rabbitmq",
            IN_FLIGHT,
            &shutdown,
        )?
    } else {
        spawn_relay(pool, counted, "bench-relay-rabbitmq", IN_FLIGHT, &shutdown)?
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    state.wait_for(|s| *s == RelayState::Idle).await?;
    sqlx::query(
        "INSERT INTO outbox.messages (id, topic, key, headers, payload)
         SELECT gen_random_uuid(), $3, 'key-' || (g % 1024), '{}', convert_to(repeat('x', $2), 'UTF8')
         FROM generate_series(1, $1) AS g",
    )
    .bind(backlog as i64)
    .bind(crate::enqueue::PAYLOAD as i32)
    .bind(EXCHANGE)
    .execute(pool)
    .await?;
    let started = Instant::now();
    let deadline = started + params.drain_timeout;
    while stored.load(Ordering::Relaxed) < backlog {
        anyhow::ensure!(
            Instant::now() < deadline,
            "relay drain to RabbitMQ stopped at {} of {backlog}",
            stored.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == RelayState::Idle),
    )
    .await
    .context("relay did not go idle")??;
    let took = started.elapsed();
    shutdown.cancel();
    task.await??;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "{left} messages left in the outbox");
    Ok(backlog as f64 / took.as_secs_f64())
}

/// What the hand-written loop publishes: the relay's messages, built in memory.
fn messages(count: usize) -> Vec<Message> {
    let payload = "x".repeat(crate::enqueue::PAYLOAD);
    (0..count)
        .map(|n| Message::new(EXCHANGE, payload.clone()).with_key(format!("key-{}", n % 1024)))
        .collect()
}

/// Publishes `count` messages into `queue` (freshly declared) with lapin directly: one confirm
/// channel, `IN_FLIGHT` publishes outstanding, every confirm awaited, returns and nacks fail.
async fn hand_publish(url: &str, queue: &str, count: usize) -> anyhow::Result<f64> {
    fresh_queue(url, queue).await?;
    let connection = lapin::Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let messages = messages(count);
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(messages)
        .map(|message| {
            let channel = channel.clone();
            async move {
                let mut headers = FieldTable::default();
                if let Some(key) = &message.key {
                    headers.insert(
                        "courier-key".into(),
                        AMQPValue::LongString(key.as_str().into()),
                    );
                }
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(message.id.to_string().into())
                    .with_headers(headers);
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                let confirm = channel
                    .basic_publish(EXCHANGE, EXCHANGE, options, &message.payload, properties)
                    .await?
                    .await?;
                match confirm {
                    Confirmation::Ack(None) => Ok(()),
                    other => bail!("not confirmed: {other:?}"),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let took = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {count} hand-written publishes failed"
    );
    let _ = connection.close(200, "bye").await;
    Ok(count as f64 / took.as_secs_f64())
}

/// `count` deliveries through `RabbitMqSource` and the consumer runtime into the batched
/// idempotency layer (one effect row per delivery, as scenario 5).
async fn consume_through_source(pool: &PgPool, url: &str, count: usize) -> anyhow::Result<f64> {
    pool.execute("TRUNCATE effects, courier_inbox.processed")
        .await?;
    let config = RabbitMqSourceConfig::new(CONSUME_QUEUE)
        .bind(EXCHANGE, "#")
        .prefetch(PREFETCH);
    // Declare the source's topology, empty, then fill the work queue.
    let connection = lapin::Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for queue in config.topology().queues() {
        let _ = channel
            .queue_delete(queue.name(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "bye").await;
    config.topology().declare(url).await?;
    let _ = hand_publish_into_existing(url, count).await?;

    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let handled = handled.clone();
        let layer = IdempotencyLayer::new(pool.clone()).batched(128).workers(2);
        ServiceBuilder::new()
            .map_response(move |_handled| {
                handled.fetch_add(1, Ordering::Relaxed);
            })
            .service(layer.layer(crate::idempotency::handler()))
    };
    let source = RabbitMqSource::connect(url, config.declare(false)).await?;
    let shutdown = CancellationToken::new();
    let consumer = Consumer::builder(source, handler)
        .concurrency(64)
        .batch_size(32)
        .poll_wait(Duration::from_millis(200))
        .declare_idempotent()
        .build();
    let started = Instant::now();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    let deadline = started + Duration::from_secs(120);
    while handled.load(Ordering::Relaxed) < count {
        anyhow::ensure!(
            Instant::now() < deadline,
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

/// Publishes `count` messages through `RabbitMqPublisher`, `IN_FLIGHT` at once, into whatever
/// queues are bound to the exchange.
async fn hand_publish_into_existing(url: &str, count: usize) -> anyhow::Result<f64> {
    let publisher = RabbitMqPublisher::connect(url).await?;
    let started = Instant::now();
    let results: Vec<Result<(), BoxError>> = futures::stream::iter(messages(count))
        .map(|message| publisher.publish(message))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    anyhow::ensure!(
        results.iter().all(Result::is_ok),
        "filling the queue failed"
    );
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// `count` deliveries consumed and acked one by one with lapin directly, same prefetch.
async fn consume_by_hand(url: &str, count: usize) -> anyhow::Result<f64> {
    fresh_queue(url, DRAIN_QUEUE).await?;
    let connection = lapin::Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let _ = hand_publish_into_existing(url, count).await?;
    // The consume queue is bound to the exchange as well and gets a copy; only the drain queue
    // is consumed.
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            DRAIN_QUEUE,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut acked = 0;
    while acked < count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("the hand-written consumer waited 30 s")?
            .context("the consumer ended")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        acked += 1;
    }
    let took = started.elapsed();
    let _ = connection.close(200, "bye").await;
    Ok(count as f64 / took.as_secs_f64())
}
