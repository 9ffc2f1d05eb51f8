//! The broker and consumer processes of the crash test: this test binary started again with
//! `CRASH_ROLE`, so they run the library code users run, in a process that can be killed.

use std::path::PathBuf;
use std::time::Duration;

use broker_lite::broker::BrokerConfig;
use broker_lite::broker::Replication;
use broker_lite::client::ConsumerConfig;
use broker_lite::embedded::{self, EmbeddedConfig};
use broker_lite::replication::{FollowerConfig, start_follower};
use broker_lite::storage::FlushMode;
use courier_middleware::{
    BrokerLiteSource, Consumer, Delivery, DeliverySource, IdempotencyLayer, NatsSource,
    NatsSourceConfig, TxDelivery,
};
use sqlx::{MySql, MySqlPool, PgPool};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service, ServiceBuilder};
use uuid::Uuid;

use crate::{GROUP, STREAM};

/// Broker settings for the crash test: durable acks, and short timers so that work held by a
/// killed consumer comes back quickly.
pub(crate) fn broker_config() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.store.flush_mode = FlushMode::Sync;
    config.store.segment_size = 64 << 20;
    config.consume_timeout = Duration::from_secs(3);
    config.heartbeat_timeout = Duration::from_secs(2);
    config
}

/// broker-lite, embedded in this process, on `CRASH_BROKER` with its data in `CRASH_DATA`.
pub(crate) async fn broker() {
    let dir = PathBuf::from(std::env::var("CRASH_DATA").unwrap());
    let listen = std::env::var("CRASH_BROKER").unwrap().parse().unwrap();
    let mut config = EmbeddedConfig::default();
    config.listen = listen;
    config.broker = broker_config();
    let _broker = embedded::start(&dir, config).await.unwrap();
    std::future::pending::<()>().await;
}

/// The replication of the replicated mode: SYNC_MASTER, one follower, a short slave timeout so
/// that a send waiting for a killed follower is answered (and retried) quickly.
fn sync_master() -> Replication {
    Replication::SyncMaster {
        min_sync_replicas: 1,
        slave_timeout: Duration::from_secs(1),
    }
}

/// A node of the replicated broker-lite, on `CRASH_BROKER` with its data in `CRASH_DATA`: without
/// `CRASH_LEADER` a SYNC_MASTER leader, with it a follower of that address, which the test
/// promotes online (`broker-lite promote`'s admin call) when it kills the leader.
pub(crate) async fn node() {
    let dir = PathBuf::from(std::env::var("CRASH_DATA").unwrap());
    let listen: std::net::SocketAddr = std::env::var("CRASH_BROKER").unwrap().parse().unwrap();
    let mut config = EmbeddedConfig::default();
    config.listen = listen;
    config.broker = broker_config();
    match std::env::var("CRASH_LEADER") {
        Err(_) => {
            config.broker.replication = sync_master();
            let _leader = embedded::start(&dir, config).await.unwrap();
            std::future::pending::<()>().await;
        }
        Ok(leader) => {
            let mut follower = FollowerConfig::new(leader, listen.to_string());
            follower.lead_with = sync_master();
            let _follower = start_follower(&dir, config, follower).await.unwrap();
            std::future::pending::<()>().await;
        }
    }
}

/// The idempotent consumer of the test's database (`CRASH_DATABASE`, Postgres or MySQL) and
/// broker (`CRASH_BROKER`: `nats://…` or broker-lite's `host:port`).
pub(crate) async fn consumer() {
    let database = std::env::var("CRASH_DATABASE").unwrap();
    let broker = std::env::var("CRASH_BROKER").unwrap();
    if database.starts_with("postgres") {
        let pool = PgPool::connect(&database).await.unwrap();
        let handler = ServiceBuilder::new()
            .layer(IdempotencyLayer::new(pool))
            .service_fn(|request: TxDelivery| async move {
                let (id, order) = ids(&request.delivery)?;
                let mut conn = request.tx().lock().await;
                sqlx::query("INSERT INTO crash_effects (message_id, order_id) VALUES ($1, $2)")
                    .bind(id)
                    .bind(order)
                    .execute(&mut *conn)
                    .await?;
                Ok::<_, BoxError>(())
            });
        consume_from(&broker, handler).await;
    } else {
        let pool = MySqlPool::connect(&database).await.unwrap();
        let handler = ServiceBuilder::new()
            .layer(IdempotencyLayer::new(pool))
            .service_fn(|request: TxDelivery<MySql>| async move {
                let (id, order) = ids(&request.delivery)?;
                let mut conn = request.tx().lock().await;
                sqlx::query("INSERT INTO crash_effects (message_id, order_id) VALUES (?, ?)")
                    .bind(id)
                    .bind(order)
                    .execute(&mut *conn)
                    .await?;
                Ok::<_, BoxError>(())
            });
        consume_from(&broker, handler).await;
    }
}

/// The message's id and the order it carries.
fn ids(delivery: &Delivery) -> Result<(Uuid, Uuid), BoxError> {
    Ok((delivery.message.id, delivery.message.payload_json()?))
}

/// Runs `handler` on the deliveries of `broker` until the process is killed.
async fn consume_from<H>(broker: &str, handler: H)
where
    H: Service<Delivery> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    if broker.starts_with("nats://") {
        let config = NatsSourceConfig::new(STREAM, GROUP).ack_wait(Duration::from_secs(3));
        let source = retry(|| NatsSource::connect(broker, config.clone())).await;
        run(source, handler).await;
    } else {
        let mut config = ConsumerConfig::new(GROUP, crate::TOPIC);
        config.heartbeat_interval = Duration::from_millis(300);
        let source = retry(|| BrokerLiteSource::connect(broker, config.clone())).await;
        run(source.with_broker_config(&broker_config()), handler).await;
    }
}

/// The broker may be down (killed by the test) when this process starts: try until it answers.
async fn retry<T, E, F: Future<Output = Result<T, E>>>(connect: impl Fn() -> F) -> T {
    loop {
        match connect().await {
            Ok(source) => return source,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn run<S, H>(source: S, handler: H)
where
    S: DeliverySource,
    H: Service<Delivery> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    Consumer::builder(source, handler)
        .group(GROUP)
        .concurrency(8)
        .build()
        .run(CancellationToken::new())
        .await;
}
