//! Scenario 12, the SQLite store: relay drain (one relay) to an in-memory sink and to broker-lite
//! SYNC_FLUSH (one send per message, and batch publish), beside a raw `DELETE … RETURNING` loop
//! with the same batch size on the same database file.
//!
//! The file lives under the target directory, not in /tmp (which may be a tmpfs where fsync costs
//! nothing), in WAL mode with SQLite's default `synchronous = FULL`: every commit, the relay's and
//! the raw loop's alike, waits for its fsync. Each drain starts from a backlog written beforehand
//! with `Outbox::enqueue_batch` and ends when the relay is idle again (every outcome recorded, the
//! outbox empty).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker_lite::storage::FlushMode;
use courier::broker::{Producer, ProducerConfig};
use courier::middleware::BrokerLitePublisher;
use courier::outbox::{Message, Outbox, RelayState, SQLITE_MIGRATOR};
use courier::outbox::{PublishBatch, Publisher, Relay};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, service_fn};

use crate::Params;
use crate::enqueue::PAYLOAD;
use crate::relay::{BATCH, Counted, broker_publisher, start_broker};
use crate::report::Report;

pub(crate) const SCENARIO: &str =
    "12. SQLite store relay drain (WAL, synchronous FULL, 256-byte payloads, batch 500, 1024 keys)";

/// Where the relay publishes.
#[derive(Debug, Clone, Copy)]
enum Sink {
    Memory,
    /// `Producer::send` per message (`Relay::builder`).
    Broker,
    /// `BrokerLitePublisher` through `Relay::batch_builder`: one request per claimed batch.
    BrokerBatch,
}

impl Sink {
    fn label(self) -> &'static str {
        match self {
            Sink::Memory => "in-memory sink",
            Sink::Broker => "broker-lite SYNC_FLUSH",
            Sink::BrokerBatch => "broker-lite SYNC_FLUSH, batch publish",
        }
    }
}

/// A migrated SQLite database in a fresh file under the target directory.
async fn fresh_database() -> anyhow::Result<(SqlitePool, tempfile::TempDir)> {
    let parent = crate::target_dir().join("bench-data");
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::tempdir_in(parent)?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("outbox.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    // A few connections: the relay's lease ahead, renewals and records each take one briefly.
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    SQLITE_MIGRATOR.run(&pool).await?;
    Ok((pool, dir))
}

/// `messages` rows through `Outbox::enqueue_batch`, 5000 per statement, keyed over 1024 keys.
async fn fill(pool: &SqlitePool, messages: usize) -> anyhow::Result<()> {
    let payload = vec![b'x'; PAYLOAD];
    let all: Vec<Message> = (0..messages)
        .map(|i| Message::new("orders", payload.clone()).with_key(format!("key-{}", i % 1024)))
        .collect();
    for chunk in all.chunks(5000) {
        Outbox::new().enqueue_batch(pool, chunk).await?;
    }
    Ok(())
}

type RelayTask = tokio::task::JoinHandle<courier::outbox::Result<()>>;

fn spawn<P: Publisher + Sync>(
    pool: &SqlitePool,
    publisher: P,
    shutdown: &CancellationToken,
) -> anyhow::Result<(RelayTask, tokio::sync::watch::Receiver<RelayState>)>
where
    P::Future: Send,
{
    let relay = Relay::builder(pool.clone(), publisher)
        .name("bench-sqlite")
        .batch_size(BATCH)
        .build()?;
    let state = relay.state();
    Ok((tokio::spawn(relay.run(shutdown.clone())), state))
}

fn spawn_batch<P: PublishBatch + Clone + Send + Sync + 'static>(
    pool: &SqlitePool,
    publisher: P,
    shutdown: &CancellationToken,
) -> anyhow::Result<(RelayTask, tokio::sync::watch::Receiver<RelayState>)> {
    let relay = Relay::batch_builder(pool.clone(), publisher)
        .name("bench-sqlite")
        .batch_size(BATCH)
        .build()?;
    let state = relay.state();
    Ok((tokio::spawn(relay.run(shutdown.clone())), state))
}

/// Fills the outbox, starts one relay and times it until the backlog is published and the relay
/// idle again (its last outcomes recorded); returns messages per second.
async fn relay_drain(pool: &SqlitePool, sink: Sink, params: &Params) -> anyhow::Result<f64> {
    let backlog = params.backlog;
    fill(pool, backlog).await?;
    let broker = match sink {
        Sink::Memory => None,
        Sink::Broker | Sink::BrokerBatch => Some(start_broker(FlushMode::Sync).await?),
    };
    let stored = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let (task, mut state) = match (&broker, sink) {
        (None, _) => {
            let counter = stored.clone();
            let publisher = service_fn(move |_message: Message| {
                counter.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, BoxError>(()) }
            });
            spawn(pool, publisher, &shutdown)?
        }
        (Some((broker, _)), Sink::BrokerBatch) => {
            let inner =
                BrokerLitePublisher::connect(broker.addr(), ProducerConfig::default()).await?;
            let publisher = Counted {
                inner,
                stored: stored.clone(),
            };
            spawn_batch(pool, publisher, &shutdown)?
        }
        (Some((broker, _)), _) => {
            let producer = Producer::connect(broker.addr(), ProducerConfig::default()).await?;
            spawn(pool, broker_publisher(producer, stored.clone()), &shutdown)?
        }
    };
    let deadline = started + params.drain_timeout;
    while stored.load(Ordering::Relaxed) < backlog {
        anyhow::ensure!(
            Instant::now() < deadline,
            "SQLite relay drain to {} stopped at {} of {backlog} after {:?}",
            sink.label(),
            stored.load(Ordering::Relaxed),
            params.drain_timeout
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == RelayState::Idle),
    )
    .await
    .context("the SQLite relay did not go idle")??;
    let took = started.elapsed();
    shutdown.cancel();
    task.await??;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_messages")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left == 0, "{left} messages left in the SQLite outbox");
    if let Some((broker, _dir)) = broker {
        broker.shutdown().await?;
    }
    Ok(backlog as f64 / took.as_secs_f64())
}

/// The same backlog drained by hand: one `DELETE … RETURNING` of the oldest `BATCH` rows per
/// (autocommit) transaction, until the outbox is empty.
async fn raw_drain(pool: &SqlitePool, params: &Params) -> anyhow::Result<f64> {
    fill(pool, params.backlog).await?;
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut drained = 0;
    loop {
        let rows = sqlx::query(
            "DELETE FROM outbox_messages WHERE seq IN (
                 SELECT seq FROM outbox_messages ORDER BY seq LIMIT $1)
             RETURNING id, topic, key, headers, payload",
        )
        .bind(BATCH as i64)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        drained += rows.len();
    }
    Ok(drained as f64 / started.elapsed().as_secs_f64())
}

/// One repeat: the raw loop, then a relay drain per sink, each on the same fresh file.
pub(crate) async fn run(params: &Params, report: &mut Report) -> anyhow::Result<()> {
    let (pool, _dir) = fresh_database().await?;
    let size = format!("{}k backlog", params.backlog / 1000);
    let raw = raw_drain(&pool, params).await?;
    report.add(
        SCENARIO,
        &format!("SQLite raw DELETE … RETURNING drain, {size}"),
        "msg/s",
        raw,
    );
    for sink in [Sink::Memory, Sink::Broker, Sink::BrokerBatch] {
        let rate = relay_drain(&pool, sink, params).await?;
        let label = format!("SQLite relay → {}, 1 relay, {size}", sink.label());
        report.add(SCENARIO, &label, "msg/s", rate);
        report.add(SCENARIO, &format!("{label} / raw"), "x", rate / raw);
    }
    pool.close().await;
    Ok(())
}
