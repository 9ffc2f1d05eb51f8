//! Scenario 3, end-to-end latency: application transactions at a fixed rate, a relay woken by
//! NOTIFY publishing to broker-lite (SYNC_FLUSH, over TCP), a plain `Consumer` pull loop. Two
//! latencies end at "handler start" (the consumer holding the delivery): from just before the
//! application's transaction begins (its statements and commit inside the figure), and from just
//! before its `COMMIT` is sent (issue 15's "commit → handler"; the commit's own round trip and
//! fsync are still inside the figure). Each message carries its number in a header, so
//! that the writer, the relay's spans, the publisher and the consumer note its times in one table
//! ([`Stamps`]) and the report splits the latency into steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker_lite::storage::FlushMode;
use courier::broker::{Admin, AdminConfig, Consumer, ConsumerConfig, Producer};
use courier::outbox::{Message, Outbox, Publisher, Relay};
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, service_fn};

use crate::Params;
use crate::relay::{batch_claim, now_ns, send_ok, start_broker};
use crate::report::{Report, quantile};

pub(crate) const SCENARIO: &str = "3. End-to-end latency, commit → handler start (broker-lite SYNC_FLUSH, relay on NOTIFY, 256 B)";
/// Carries the message's number, which indexes its times in [`Stamps`].
const HEADER: &str = "bench-index";
const WRITERS: usize = 16;

/// Per-message times in ns since the relay module's epoch, indexed by the message's number.
struct Stamps {
    sent: Vec<AtomicU64>,
    commit: Vec<AtomicU64>,
    committed: Vec<AtomicU64>,
    claim_start: Vec<AtomicU64>,
    claimed: Vec<AtomicU64>,
    publish: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    handler: Vec<AtomicU64>,
}

impl Stamps {
    fn new(total: usize) -> Self {
        let column = || (0..total).map(|_| AtomicU64::new(0)).collect();
        Self {
            sent: column(),
            commit: column(),
            committed: column(),
            claim_start: column(),
            claimed: column(),
            publish: column(),
            acked: column(),
            handler: column(),
        }
    }

    /// `to - from` in ms for every message, sorted.
    fn segment(&self, from: &[AtomicU64], to: &[AtomicU64]) -> Vec<f64> {
        let mut out: Vec<f64> = from
            .iter()
            .zip(to)
            .map(|(a, b)| {
                let (a, b) = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
                (b as f64 - a as f64) / 1e6
            })
            .collect();
        // The first 10 % warm the connections and the relay's wake-up path.
        out.drain(..out.len() / 10);
        out.sort_by(f64::total_cmp);
        out
    }
}

fn set(column: &[AtomicU64], i: usize, ns: u64) {
    if let Some(slot) = column.get(i) {
        slot.store(ns, Ordering::Relaxed);
    }
}

fn index_of(message_headers: &std::collections::BTreeMap<String, String>) -> Option<usize> {
    message_headers.get(HEADER).and_then(|s| s.parse().ok())
}

pub(crate) async fn run(pool: &PgPool, params: &Params, report: &mut Report) -> anyhow::Result<()> {
    for &(rate, seconds) in &params.latency_rates {
        let total = (rate as f64 * seconds) as usize;
        let (stamps, achieved) = once(pool, rate, total).await?;
        let label = format!("{rate} msg/s");
        let from_tx_start = stamps.segment(&stamps.sent, &stamps.handler);
        let from_commit = stamps.segment(&stamps.commit, &stamps.handler);
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            report.add(
                SCENARIO,
                &format!("{label}: {name}"),
                "ms",
                quantile(&from_tx_start, q),
            );
            report.add(
                SCENARIO,
                &format!("{label}: commit → handler {name}"),
                "ms",
                quantile(&from_commit, q),
            );
        }
        report.add(
            SCENARIO,
            &format!("{label}: offered rate achieved"),
            "msg/s",
            achieved,
        );
        // Where the time goes: each step's mean and p99 (the p99s do not add up to the total's).
        let s = &stamps;
        let steps: [(&str, &[AtomicU64], &[AtomicU64]); 7] = [
            ("tx start → commit call", &s.sent, &s.commit),
            ("commit call → committed", &s.commit, &s.committed),
            (
                "committed → claim start (relay wake-up)",
                &s.committed,
                &s.claim_start,
            ),
            ("claim (BEGIN + claim query)", &s.claim_start, &s.claimed),
            ("claimed → publish call", &s.claimed, &s.publish),
            ("publish → broker ack", &s.publish, &s.acked),
            ("broker ack → handler start", &s.acked, &s.handler),
        ];
        for (step, from, to) in steps {
            let values = stamps.segment(from, to);
            let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
            report.add(SCENARIO, &format!("{label}: {step}, mean"), "ms", mean);
            report.add(
                SCENARIO,
                &format!("{label}: {step}, p99"),
                "ms",
                quantile(&values, 0.99),
            );
        }
    }
    Ok(())
}

/// A relay publisher as [`crate::relay::broker_publisher`], noting for each message when its
/// batch's claim began and returned, when it was handed over and when the broker acknowledged it.
fn timed_publisher(producer: Producer, stamps: Arc<Stamps>) -> impl Publisher {
    service_fn(move |message: Message| {
        let producer = producer.clone();
        let stamps = stamps.clone();
        async move {
            let i = index_of(&message.headers).unwrap_or(usize::MAX);
            set(&stamps.publish, i, now_ns());
            let (claim_start, claimed) = batch_claim();
            set(&stamps.claim_start, i, claim_start);
            set(&stamps.claimed, i, claimed);
            send_ok(&producer, message).await?;
            set(&stamps.acked, i, now_ns());
            Ok::<(), BoxError>(())
        }
    })
}

/// Runs `total` messages at `rate`; returns their times and the rate the writers achieved.
async fn once(pool: &PgPool, rate: u32, total: usize) -> anyhow::Result<(Arc<Stamps>, f64)> {
    sqlx::query("TRUNCATE outbox.messages")
        .execute(pool)
        .await?;
    let (broker, _dir) = start_broker(FlushMode::Sync).await?;
    let admin = Admin::connect(broker.addr(), AdminConfig::default()).await?;
    admin.create_topic("e2e", 4).await?;
    let consumer =
        Consumer::connect(broker.addr(), ConsumerConfig::new("bench-e2e", "e2e")).await?;
    let producer = Producer::connect(broker.addr(), Default::default()).await?;
    let stamps = Arc::new(Stamps::new(total));
    let relay = Relay::builder(pool.clone(), timed_publisher(producer, stamps.clone()))
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
        let stamps = stamps.clone();
        writers.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let outbox = Outbox::new();
            while let Ok(i) = rx.recv().await {
                set(&stamps.sent, i, now_ns());
                let message = Message::new("e2e", vec![b'x'; 256])
                    .with_key(format!("key-{}", i % 1024))
                    .with_header(HEADER, i.to_string());
                let mut tx = conn.begin().await?;
                sqlx::query("INSERT INTO orders (total) VALUES (1)")
                    .execute(&mut *tx)
                    .await?;
                outbox.enqueue(&mut *tx, &message).await?;
                set(&stamps.commit, i, now_ns());
                tx.commit().await?;
                set(&stamps.committed, i, now_ns());
            }
            anyhow::Ok(())
        }));
    }
    drop(rx);

    let consumer_stamps = stamps.clone();
    let consume = tokio::spawn(async move {
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while received < total && Instant::now() < deadline {
            let deliveries = consumer.pull(256, Duration::from_millis(100)).await?;
            let now = now_ns();
            for delivery in &deliveries {
                if let Some(i) = index_of(&delivery.message.properties) {
                    set(&consumer_stamps.handler, i, now);
                    received += 1;
                }
            }
            futures::future::try_join_all(deliveries.iter().map(|d| consumer.ack(d))).await?;
        }
        consumer.close().await?;
        anyhow::Ok(received)
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
    let received = consume.await??;
    shutdown.cancel();
    relay_task.await??;
    broker.shutdown().await?;
    anyhow::ensure!(received == total, "received {received} of {total} messages");
    Ok((stamps, achieved))
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
