//! Everything the quickstart runs, in this process: a SQLite database and an embedded broker-lite
//! in a temporary directory, the relay, and the payment consumer.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use courier::broker::{ConsumerConfig, ProducerConfig};
use courier::broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use courier::broker_lite::storage::FlushMode;
use courier::middleware::{
    BrokerLitePublisher, BrokerLiteSource, Consumer, RequireSendOk, RequireSendOkLayer,
};
use courier::outbox::{Message, Relay};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{Layer, ServiceExt, service_fn};

use super::account::Account;
use super::payments;

/// The running pieces.
pub(crate) struct World {
    _dir: tempfile::TempDir,
    pub(crate) database_path: PathBuf,
    pub(crate) broker_path: PathBuf,
    pub(crate) pool: SqlitePool,
    pub(crate) broker: EmbeddedBroker,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What the database and the broker hold at the end.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) payments: Vec<String>,
    pub(crate) orders: i64,
    pub(crate) pending: i64,
    pub(crate) failures: i64,
    pub(crate) dead_letters: usize,
}

impl World {
    pub(crate) async fn start(account: &Account) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let database_path = dir.path().join("shop.db");
        let broker_path = dir.path().join("broker");
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&database_path)
            .create_if_missing(true)
            // WAL: readers never wait for the writer; the relay reads while orders are written.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePool::connect_with(options).await?;
        courier::outbox::migrate(&pool)
            .await
            .context("creating the outbox and inbox tables")?;
        sqlx::raw_sql(
            "CREATE TABLE orders (id TEXT PRIMARY KEY);
             CREATE TABLE payments (order_id TEXT PRIMARY KEY, amount_cents INTEGER NOT NULL);",
        )
        .execute(&pool)
        .await?;

        let mut config = EmbeddedConfig::default();
        config.broker.store.flush_mode = FlushMode::Sync;
        // Quick redeliveries for the demonstration; RocketMQ's levels start at 1 s.
        config.broker.delay_levels = [100, 200, 400, 800, 1600]
            .map(Duration::from_millis)
            .to_vec();
        config.broker.first_retry_level = 1;
        let broker = embedded::start(&broker_path, config)
            .await
            .context("starting the embedded broker-lite")?;

        let shutdown = CancellationToken::new();
        let mut world = Self {
            _dir: dir,
            database_path,
            broker_path,
            pool,
            broker,
            shutdown,
            tasks: Vec::new(),
        };
        world.start_relay(account).await?;
        world.start_consumer(account).await?;
        world.watch_dead_letters(account);
        Ok(world)
    }

    /// A producer for the embedded broker that fails unless the broker answers SEND_OK.
    pub(crate) async fn broker_publisher(
        &self,
    ) -> anyhow::Result<RequireSendOk<BrokerLitePublisher>> {
        let publisher = BrokerLitePublisher::connect(self.broker.addr(), ProducerConfig::default())
            .await
            .context("connecting a producer to the embedded broker")?;
        Ok(RequireSendOkLayer::new().layer(publisher))
    }

    async fn start_relay(&mut self, account: &Account) -> anyhow::Result<()> {
        let inner = self.broker_publisher().await?;
        let account = account.clone();
        let publisher = service_fn(move |message: Message| {
            let (inner, account) = (inner.clone(), account.clone());
            async move {
                let order = message.key.clone().unwrap_or_default();
                // RequireSendOk turns any status but SEND_OK into an error: the relay retries it.
                let _stored = inner.oneshot(message).await?;
                account.line(&format!(
                    "relay       {order} published: broker-lite answered SEND_OK after its fsync"
                ));
                Ok::<_, tower::BoxError>(())
            }
        });
        let relay = Relay::builder(self.pool.clone(), publisher)
            .name("quickstart-relay")
            .build()?;
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(error) = relay.run(shutdown).await {
                eprintln!("the relay stopped: {:#}", anyhow::Error::from(error));
            }
        }));
        Ok(())
    }

    async fn start_consumer(&mut self, account: &Account) -> anyhow::Result<()> {
        let source = BrokerLiteSource::connect(
            self.broker.addr(),
            ConsumerConfig::new("payments", "ORDER_CREATED"),
        )
        .await
        .context("subscribing the payment consumer")?
        .with_broker_config(self.broker.broker().config());
        let consumer = Consumer::builder(
            source,
            payments::handler(self.pool.clone(), account.clone()),
        )
        .group("payments")
        .max_deliveries(payments::MAX_DELIVERIES)
        .build();
        self.tasks
            .push(tokio::spawn(consumer.run(self.shutdown.clone())));
        Ok(())
    }

    /// Notes each message the consumer gives up on, as the broker's dead-letter topic shows it.
    fn watch_dead_letters(&mut self, account: &Account) {
        let broker = self.broker.broker().clone();
        let account = account.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let mut ticks = tokio::time::interval(Duration::from_millis(50));
            while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
                for dead in broker.dead_letters("payments", 10).await.unwrap_or_default() {
                    let order = dead.key.clone().unwrap_or_default();
                    if seen.insert(dead.message_id) {
                        account.line(&format!(
                            "broker      {order} is in %DLQ%payments, kept for inspection and replay"
                        ));
                        account.record(|s| {
                            s.dead_lettered.insert(order);
                        });
                    }
                }
            }
        }));
    }

    pub(crate) async fn summary(&self) -> anyhow::Result<Summary> {
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool);
        Ok(Summary {
            payments: sqlx::query_scalar("SELECT order_id FROM payments ORDER BY order_id")
                .fetch_all(&self.pool)
                .await?,
            orders: count("SELECT count(*) FROM orders").await?,
            pending: count("SELECT count(*) FROM outbox_messages").await?,
            failures: count("SELECT count(*) FROM outbox_failures").await?,
            dead_letters: self
                .broker
                .broker()
                .dead_letters("payments", 100)
                .await?
                .len(),
        })
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.await.context("a quickstart task panicked")?;
        }
        self.broker.shutdown().await?;
        Ok(())
    }
}

impl Summary {
    /// Fails unless the story ended as it must.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let expected = ["order-1001", "order-1003"];
        anyhow::ensure!(
            self.payments == expected,
            "expected payments for {expected:?}, found {:?}",
            self.payments
        );
        anyhow::ensure!(
            self.orders == 3,
            "expected 3 committed orders, found {}",
            self.orders
        );
        anyhow::ensure!(
            self.pending == 0,
            "{} messages are still in the outbox",
            self.pending
        );
        anyhow::ensure!(
            self.failures == 0,
            "{} messages failed to publish",
            self.failures
        );
        anyhow::ensure!(
            self.dead_letters == 1,
            "expected the poison message in %DLQ%payments, found {} dead letters",
            self.dead_letters
        );
        Ok(())
    }
}
