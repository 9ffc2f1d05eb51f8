//! Scenario 3, end-to-end latency: application transactions at a fixed rate, a relay woken by
//! NOTIFY publishing to broker-lite (SYNC_FLUSH, over TCP), a plain `Consumer` pull loop. The time
//! is taken just before the application's transaction begins and travels in a header; the
//! latency is "handler start" (the consumer holding the delivery) minus that time.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use broker_lite::storage::FlushMode;
use courier::broker::{Admin, AdminConfig, Consumer, ConsumerConfig, Producer};
use courier::outbox::{Message, Outbox, Relay};
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::Params;
use crate::relay::{broker_publisher, start_broker};
use crate::report::{Report, quantile};

pub(crate) const SCENARIO: &str = "3. End-to-end latency, commit → handler start (broker-lite SYNC_FLUSH, relay on NOTIFY, 256 B)";
const HEADER: &str = "bench-sent-unix-ns";
const WRITERS: usize = 16;

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

pub(crate) async fn run(pool: &PgPool, params: &Params, report: &mut Report) -> anyhow::Result<()> {
    for &(rate, seconds) in &params.latency_rates {
        let total = (rate as f64 * seconds) as usize;
        let (mut latencies, split, achieved) = once(pool, rate, total).await?;
        // The first 10 % warm the connections and the relay's wake-up path.
        let warm = latencies.len() / 10;
        latencies.drain(..warm);
        latencies.sort_by(f64::total_cmp);
        let label = format!("{rate} msg/s");
        report.add(
            SCENARIO,
            &format!("{label}: p50"),
            "ms",
            quantile(&latencies, 0.5),
        );
        report.add(
            SCENARIO,
            &format!("{label}: p99"),
            "ms",
            quantile(&latencies, 0.99),
        );
        report.add(
            SCENARIO,
            &format!("{label}: p999"),
            "ms",
            quantile(&latencies, 0.999),
        );
        report.add(
            SCENARIO,
            &format!("{label}: offered rate achieved"),
            "msg/s",
            achieved,
        );
        // Where the time goes, split at the broker's store timestamp (whole ms, hence means).
        let n = split.len().max(1) as f64;
        let to_broker = split.iter().map(|s| s.0).sum::<f64>() / n;
        let to_handler = split.iter().map(|s| s.1).sum::<f64>() / n;
        report.add(
            SCENARIO,
            &format!("{label}: mean, tx start → stored in broker"),
            "ms",
            to_broker,
        );
        report.add(
            SCENARIO,
            &format!("{label}: mean, stored → handler start"),
            "ms",
            to_handler,
        );
    }
    Ok(())
}

/// Returns the latencies in ms (in arrival order), their split at the broker's store time
/// (sent → stored, stored → handler) and the rate the writers achieved.
async fn once(
    pool: &PgPool,
    rate: u32,
    total: usize,
) -> anyhow::Result<(Vec<f64>, Vec<(f64, f64)>, f64)> {
    sqlx::query("TRUNCATE outbox.messages")
        .execute(pool)
        .await?;
    let (broker, _dir) = start_broker(FlushMode::Sync).await?;
    let admin = Admin::connect(broker.addr(), AdminConfig::default()).await?;
    admin.create_topic("e2e", 4).await?;
    let consumer =
        Consumer::connect(broker.addr(), ConsumerConfig::new("bench-e2e", "e2e")).await?;
    let producer = Producer::connect(broker.addr(), Default::default()).await?;
    let stored = Arc::new(AtomicUsize::new(0));
    let relay = Relay::builder(pool.clone(), broker_publisher(producer, stored))
        .name("bench-e2e")
        .build()?;
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Writers: `WRITERS` connections taking ticks from a channel, one transaction per message.
    let (tx, rx) = async_channel(total);
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let rx = rx.clone();
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let outbox = Outbox::new();
            while let Ok(i) = rx.recv().await {
                let sent = unix_ns();
                let message = Message::new("e2e", vec![b'x'; 256])
                    .with_key(format!("key-{}", i % 1024))
                    .with_header(HEADER, sent.to_string());
                let mut tx = conn.begin().await?;
                sqlx::query("INSERT INTO orders (total) VALUES (1)")
                    .execute(&mut *tx)
                    .await?;
                outbox.enqueue(&mut *tx, &message).await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    drop(rx);

    let consume = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total);
        let mut split = Vec::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(60);
        while latencies.len() < total && Instant::now() < deadline {
            let deliveries = consumer.pull(256, Duration::from_millis(100)).await?;
            let now = unix_ns();
            for delivery in &deliveries {
                if let Some(sent) = delivery
                    .message
                    .properties
                    .get(HEADER)
                    .and_then(|s| s.parse::<u128>().ok())
                {
                    latencies.push(now.saturating_sub(sent) as f64 / 1e6);
                    let stored = u128::from(delivery.message.stored_timestamp_ms) * 1_000_000;
                    split.push((
                        (stored as f64 - sent as f64) / 1e6,
                        (now as f64 - stored as f64) / 1e6,
                    ));
                }
            }
            futures::future::try_join_all(deliveries.iter().map(|d| consumer.ack(d))).await?;
        }
        consumer.close().await?;
        anyhow::Ok((latencies, split))
    });

    // The pacer: at each millisecond, release the messages due by then.
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut released = 0usize;
    while released < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        while released < due {
            tx.send(released).await?;
            released += 1;
        }
    }
    drop(tx);
    for writer in writers {
        writer.await??;
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let (latencies, split) = consume.await??;
    shutdown.cancel();
    relay_task.await??;
    broker.shutdown().await?;
    anyhow::ensure!(
        latencies.len() == total,
        "received {} of {total} messages",
        latencies.len()
    );
    Ok((latencies, split, achieved))
}

/// A multi-consumer channel from tokio parts: an mpsc receiver behind a mutex.
fn async_channel(capacity: usize) -> (tokio::sync::mpsc::Sender<usize>, SharedReceiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (tx, SharedReceiver(Arc::new(tokio::sync::Mutex::new(rx))))
}

#[derive(Clone)]
struct SharedReceiver(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<usize>>>);

impl SharedReceiver {
    async fn recv(&self) -> Result<usize, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}
