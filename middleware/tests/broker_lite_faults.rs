//! The outbox relay on Postgres publishing to a broker-lite that misbehaves: a broker that is down
//! for a while pauses the relay without costing attempts, and a broker that answers
//! `FLUSH_DISK_TIMEOUT` does not get the row deleted.

mod broker_lite_support;

use std::sync::Arc;
use std::time::Duration;

use broker_lite::broker::{Broker, BrokerConfig, SendStatus, TraceKind};
use broker_lite::client::ProducerConfig;
use broker_lite::embedded::{self, EmbeddedConfig};
use broker_lite::server::{self, ServerConfig};
use broker_lite::storage::FlushMode;
use broker_lite::storage::backend::FaultyBackend;
use broker_lite_support::{PATIENCE, eventually};
use courier_middleware::BrokerLitePublisher;
use courier_outbox::{Backoff, CircuitState, Message, Outbox, Relay, RelayBuilder};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

courier_test_support::postgres_for_tests!();

/// A SYNC_FLUSH broker with small segments.
fn broker_config() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.store.flush_mode = FlushMode::Sync;
    config.store.segment_size = 1 << 20;
    config.store.max_record_size = 64 * 1024;
    config.max_message_size = 32 * 1024;
    config
}

/// A relay for which any counted failure shows: one attempt allowed, then the failure table (and
/// a retry would wait an hour). Published rows are kept (marked sent) so their attempts can be read.
fn relay(
    pool: &PgPool,
    publisher: BrokerLitePublisher,
) -> RelayBuilder<sqlx::Postgres, BrokerLitePublisher> {
    let hour = Duration::from_secs(3600);
    Relay::builder(pool.clone(), publisher)
        .max_attempts(1)
        .backoff(Backoff {
            base: hour,
            factor: 1.0,
            max: hour,
            jitter: 0.0,
        })
        .retention(hour)
}

/// (attempts, sent) of every outbox row, in sequence order.
async fn rows(pool: &PgPool) -> Vec<(i32, bool)> {
    sqlx::query_as("SELECT attempts, sent_at IS NOT NULL FROM outbox.messages ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn failures(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox.failures")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_for_circuit(circuit: &mut watch::Receiver<CircuitState>, wanted: CircuitState) {
    tokio::time::timeout(PATIENCE, circuit.wait_for(|s| *s == wanted))
        .await
        .unwrap_or_else(|_| panic!("the relay's circuit never became {wanted:?}"))
        .unwrap();
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_broker_outage_pauses_the_relay_and_the_backlog_goes_out_with_no_attempt_counted(
    pool: PgPool,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::default();
    config.broker = broker_config();
    let broker = embedded::start(dir.path(), config.clone()).await.unwrap();
    let addr = broker.addr();

    let publisher = BrokerLitePublisher::connect(addr, ProducerConfig::default())
        .await
        .unwrap();
    let relay = relay(&pool, publisher).build().unwrap();
    let mut circuit = relay.circuit();
    let shutdown = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));

    let outbox = Outbox::new();
    let before = Message::new("orders", "before the outage");
    outbox.enqueue(&pool, &before).await.unwrap();
    eventually("the first message published", || async {
        rows(&pool).await == [(1, true)]
    })
    .await;

    // The broker goes away; the application keeps committing orders.
    broker.shutdown().await.unwrap();
    let during: Vec<Message> = (0..20)
        .map(|i| Message::new("orders", format!("during {i}")).with_key(format!("order-{}", i % 4)))
        .collect();
    outbox.enqueue_batch(&pool, &during).await.unwrap();
    wait_for_circuit(&mut circuit, CircuitState::Open).await;
    let pending: Vec<(i32, bool)> = rows(&pool).await.into_iter().filter(|r| !r.1).collect();
    assert_eq!(
        pending,
        vec![(0, false); during.len()],
        "the outage counted attempts"
    );
    assert_eq!(failures(&pool).await, 0);

    // The broker comes back on the same address and data directory.
    config.listen = addr;
    let broker = embedded::start(dir.path(), config).await.unwrap();
    wait_for_circuit(&mut circuit, CircuitState::Closed).await;
    eventually("the backlog published", || async {
        rows(&pool).await.iter().all(|&(_, sent)| sent)
    })
    .await;

    // Each message went out on its first counted attempt, and the broker has each one.
    assert_eq!(rows(&pool).await, vec![(1, true); during.len() + 1]);
    assert_eq!(failures(&pool).await, 0);
    for message in std::iter::once(&before).chain(&during) {
        let stored = broker.broker().lookup(message.id).await.unwrap();
        assert!(stored.is_some(), "{} is not in the broker", message.id);
    }
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, relaying)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    broker.shutdown().await.unwrap();
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_flush_disk_timeout_leaves_the_row_in_the_outbox(pool: PgPool) {
    // A disk whose fsync stalls: a SYNC_FLUSH broker answers FLUSH_DISK_TIMEOUT after 100 ms.
    let backend = FaultyBackend::new();
    let mut config = broker_config();
    config.store.sync_flush_timeout = Duration::from_millis(100);
    let broker = Broker::open_with_backend(Arc::new(backend.clone()), config)
        .await
        .unwrap();
    broker.create_topic("orders", 1).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server::run(
        listener,
        broker.clone(),
        ServerConfig::default(),
        stop.clone().cancelled_owned(),
    ));
    backend.hold_sync(true);
    // Released however the test ends: a held fsync would keep the broker's writer thread (and
    // with it the test) from finishing.
    let _release = Release(backend.clone());

    // The bare publisher, as `Relay::builder(pool, publisher)` gets it: no RequireSendOk around it.
    let publisher = BrokerLitePublisher::connect(addr, ProducerConfig::default())
        .await
        .unwrap();
    let relay = relay(&pool, publisher).max_attempts(16).build().unwrap();
    let shutdown = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));
    let message = Message::new("orders", "not on disk yet");
    Outbox::new().enqueue(&pool, &message).await.unwrap();
    eventually("the publish attempt recorded", || async {
        rows(&pool).await != [(0, false)]
    })
    .await;

    assert_eq!(
        rows(&pool).await,
        [(1, false)],
        "a FLUSH_DISK_TIMEOUT answer must count as a failed attempt, not a publish"
    );
    assert_eq!(failures(&pool).await, 0, "a degraded status is retryable");
    let answered: Vec<SendStatus> = broker
        .trace(message.id)
        .into_iter()
        .filter_map(|event| match event.kind {
            TraceKind::Stored { status, .. } => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(answered, [SendStatus::FlushDiskTimeout]);

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, relaying)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(_release);
    stop.cancel();
    serving.await.unwrap().unwrap();
    broker.close().await.unwrap();
}

/// Lets the stalled fsyncs of a [`FaultyBackend`] go on drop.
struct Release(FaultyBackend);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.hold_sync(false);
    }
}
