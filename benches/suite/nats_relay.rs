//! Scenario 8, relay → NATS JetStream (feature `nats`): the outbox backlog drained by the relay
//! through `NatsPublisher` (one call per message, and batch publish with pipelined PubAcks)
//! beside a hand-written async-nats loop publishing the same messages with the same guarantees:
//! `Nats-Msg-Id` set, every PubAck awaited and checked, the same number of publishes in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier::middleware::async_nats;
use courier::middleware::nats::{DEFAULT_MAX_IN_FLIGHT, NatsPublisher, StreamSpec};
use courier::outbox::{Message, RelayState};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::Params;
use crate::relay::{Counted, RelayTask, mark_published, spawn_batch_relay, spawn_relay};
use crate::report::Report;

pub(crate) const SCENARIO: &str =
    "8. NATS JetStream: relay drain (file stream, PubAcks, 256-byte payloads, 1024 keys)";

/// The stream and its one subject (the outbox topic).
const STREAM: &str = "COURIER_BENCH_RELAY";
const SUBJECT: &str = "courier-bench-relay";

pub(crate) async fn run(
    pool: &PgPool,
    url: &str,
    params: &Params,
    report: &mut Report,
) -> anyhow::Result<()> {
    let backlog = params.backlog;
    let size = format!("{}k", backlog / 1000);
    let one_by_one = relay_drain(pool, url, backlog, params, false).await?;
    let batched = relay_drain(pool, url, backlog, params, true).await?;
    let hand = hand_publish(url, backlog).await?;
    let relay_label = format!("relay → NATS JetStream, 1 relay, {size} backlog");
    let batch_label = format!("relay → NATS JetStream, batch publish, 1 relay, {size} backlog");
    report.add(SCENARIO, &relay_label, "msg/s", one_by_one);
    report.add(SCENARIO, &batch_label, "msg/s", batched);
    report.add(
        SCENARIO,
        &format!("hand-written async-nats loop, {DEFAULT_MAX_IN_FLIGHT} PubAcks in flight, {size} messages"),
        "msg/s",
        hand,
    );
    report.add(
        SCENARIO,
        &format!("{relay_label} / hand-written loop"),
        "x",
        one_by_one / hand,
    );
    report.add(
        SCENARIO,
        &format!("{batch_label} / hand-written loop"),
        "x",
        batched / hand,
    );
    let client = async_nats::connect(url).await?;
    let _ = async_nats::jetstream::new(client)
        .delete_stream(STREAM)
        .await;
    Ok(())
}

/// Deletes and recreates the bench stream (file storage, the default duplicate window).
async fn fresh_stream(url: &str) -> anyhow::Result<async_nats::jetstream::Context> {
    let jetstream = async_nats::jetstream::new(async_nats::connect(url).await?);
    let _ = jetstream.delete_stream(STREAM).await;
    StreamSpec::new(STREAM, [SUBJECT])
        .ensure(&jetstream)
        .await?;
    Ok(jetstream)
}

async fn relay_drain(
    pool: &PgPool,
    url: &str,
    backlog: usize,
    params: &Params,
    batch: bool,
) -> anyhow::Result<f64> {
    let jetstream = fresh_stream(url).await?;
    sqlx::query("TRUNCATE outbox.messages")
        .execute(pool)
        .await?;
    let stored = Arc::new(AtomicUsize::new(0));
    let publisher = NatsPublisher::connect(url).await?;
    let shutdown = CancellationToken::new();
    let name = "bench-relay-nats";
    let (task, mut state): (RelayTask, _) = if batch {
        let publisher = Counted {
            inner: publisher,
            stored: stored.clone(),
        };
        spawn_batch_relay(pool, publisher, name, 64, &shutdown)?
    } else {
        let stored = stored.clone();
        let counted = ServiceBuilder::new()
            .map_response(move |_| {
                stored.fetch_add(1, Ordering::Relaxed);
                mark_published();
            })
            .service(publisher);
        spawn_relay(pool, counted, name, 64, &shutdown)?
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
    .bind(SUBJECT)
    .execute(pool)
    .await?;
    let started = Instant::now();
    let deadline = started + params.drain_timeout;
    while stored.load(Ordering::Relaxed) < backlog {
        anyhow::ensure!(
            Instant::now() < deadline,
            "relay drain to NATS stopped at {} of {backlog}",
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
    let info = jetstream.get_stream(STREAM).await?.info().await?.clone();
    anyhow::ensure!(
        info.state.messages as usize == backlog,
        "the stream holds {} messages, expected {backlog}",
        info.state.messages
    );
    Ok(backlog as f64 / took.as_secs_f64())
}

/// The relay's messages published with async-nats directly: `Nats-Msg-Id`, the courier
/// headers' equivalent, `DEFAULT_MAX_IN_FLIGHT` PubAcks outstanding, each one checked.
async fn hand_publish(url: &str, count: usize) -> anyhow::Result<f64> {
    let jetstream = fresh_stream(url).await?;
    let payload = bytes::Bytes::from("x".repeat(crate::enqueue::PAYLOAD));
    let messages: Vec<Message> = (0..count)
        .map(|n| Message::new(SUBJECT, payload.clone()).with_key(format!("key-{}", n % 1024)))
        .collect();
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(messages)
        .map(|message| {
            let jetstream = jetstream.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", message.id.to_string().as_str());
                if let Some(key) = &message.key {
                    headers.insert("Courier-Key", key.as_str());
                }
                let ack = jetstream
                    .publish_with_headers(SUBJECT, headers, message.payload.clone())
                    .await?
                    .await?;
                anyhow::ensure!(ack.stream == STREAM, "acked by stream {}", ack.stream);
                mark_published();
                Ok(())
            }
        })
        .buffer_unordered(DEFAULT_MAX_IN_FLIGHT)
        .collect()
        .await;
    let took = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {count} hand-written publishes failed"
    );
    Ok(count as f64 / took.as_secs_f64())
}
