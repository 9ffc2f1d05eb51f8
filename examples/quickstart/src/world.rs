//! Everything the quickstart runs, in this process: a SQLite database in a temporary directory,
//! the broker (an embedded broker-lite there too, or the one `--broker` names), the relay, and the
//! payment consumer. Publisher and source come from the broker's address
//! ([`BrokerAddress`]): the same code for every broker.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use courier::broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use courier::broker_lite::storage::FlushMode;
use courier::middleware::{AnyPublisher, BrokerAddress, Consumer, Subscription};
use courier::outbox::{Message, Relay};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{ServiceExt, service_fn};

use super::account::Account;
use super::payments;

/// Redelivery waits short enough for a demonstration; RocketMQ's levels start at 1 s.
const DELAYS_MS: [u64; 5] = [100, 200, 400, 800, 1600];

/// The running pieces.
pub(crate) struct World {
    _dir: tempfile::TempDir,
    pub(crate) database_path: PathBuf,
    pub(crate) pool: SqlitePool,
    /// Where the relay publishes and the consumer subscribes.
    pub(crate) broker: BrokerAddress,
    /// The in-process broker-lite and its data directory, unless `--broker` named another.
    pub(crate) embedded: Option<(EmbeddedBroker, PathBuf)>,
    /// The topic and the payment group.
    pub(crate) subscription: Subscription,
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
    pub(crate) dead_letters: u64,
}

impl World {
    /// Starts everything; `external` is the broker to use instead of an embedded broker-lite.
    pub(crate) async fn start(
        account: &Account,
        external: Option<BrokerAddress>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let database_path = dir.path().join("shop.db");
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

        let delays = DELAYS_MS.map(Duration::from_millis);
        let (broker, embedded, subscription) = match external {
            None => {
                let broker_path = dir.path().join("broker");
                let mut config = EmbeddedConfig::default();
                config.broker.store.flush_mode = FlushMode::Sync;
                config.broker.delay_levels = delays.to_vec();
                config.broker.first_retry_level = 1;
                let broker = embedded::start(&broker_path, config)
                    .await
                    .context("starting the embedded broker-lite")?;
                let subscription = Subscription::new("ORDER_CREATED", "payments")
                    .broker_lite_redelivery(broker.broker().config());
                let address = BrokerAddress::BrokerLite(broker.addr().to_string());
                (address, Some((broker, broker_path)), subscription)
            }
            // A broker that outlives the run: names of this run's own, so that it never meets a
            // stream, queue or message of an earlier run.
            Some(address) => {
                let run = run_id();
                let subscription =
                    Subscription::new(format!("ORDER_CREATED_{run}"), format!("payments-{run}"));
                (address, None, subscription)
            }
        };
        let subscription = subscription
            .max_deliveries(payments::MAX_DELIVERIES)
            .delays(delays);

        let shutdown = CancellationToken::new();
        let mut world = Self {
            _dir: dir,
            database_path,
            pool,
            broker,
            embedded,
            subscription,
            shutdown,
            tasks: Vec::new(),
        };
        // The consumer first: subscribing provisions the stream or queue the relay publishes to.
        world.start_consumer(account).await?;
        world.start_relay(account).await?;
        world.watch_dead_letters(account);
        Ok(world)
    }

    /// A publisher to the broker: `Ok` only once the broker took the message (SEND_OK after
    /// broker-lite's fsync, a JetStream PubAck, a RabbitMQ publisher confirm).
    pub(crate) async fn publisher(&self) -> anyhow::Result<AnyPublisher> {
        self.broker
            .publisher()
            .await
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| format!("connecting a publisher to {}", self.broker))
    }

    /// What the broker's acknowledgement of a publish means, for the narration.
    pub(crate) fn acknowledgement(&self) -> &'static str {
        match &self.broker {
            BrokerAddress::Nats(_) => "the stream answered its PubAck",
            BrokerAddress::RabbitMq(_) => "RabbitMQ confirmed it (publisher confirm)",
            _ => "broker-lite answered SEND_OK after its fsync",
        }
    }

    /// Where the broker keeps the payment group's dead letters, for the narration.
    pub(crate) fn dead_letter_place(&self) -> String {
        let group = self.subscription.group();
        match &self.broker {
            BrokerAddress::Nats(_) => format!(
                "the NATS stream {}_DEAD_LETTERS",
                courier::nats::StreamSpec::for_topic(self.subscription.topic()).name()
            ),
            BrokerAddress::RabbitMq(_) => format!("the RabbitMQ queue {group}.dlq"),
            _ => format!("%DLQ%{group}"),
        }
    }

    async fn start_relay(&mut self, account: &Account) -> anyhow::Result<()> {
        let inner = self.publisher().await?;
        let account = account.clone();
        let acknowledgement = self.acknowledgement();
        let publisher = service_fn(move |message: Message| {
            let (inner, account) = (inner.clone(), account.clone());
            async move {
                let order = message.key.clone().unwrap_or_default();
                // Anything short of the broker's acknowledgement is an error: the relay retries it.
                let _stored = inner.oneshot(message).await?;
                account.line(&format!("relay       {order} published: {acknowledgement}"));
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
        let source = self
            .broker
            .subscribe(&self.subscription)
            .await
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| format!("subscribing the payment consumer at {}", self.broker))?;
        let consumer = Consumer::builder(
            source,
            payments::handler(self.pool.clone(), account.clone()),
        )
        .group(self.subscription.group())
        .max_deliveries(payments::MAX_DELIVERIES)
        .build();
        self.tasks
            .push(tokio::spawn(consumer.run(self.shutdown.clone())));
        Ok(())
    }

    /// Notes each message the consumer gives up on, as the broker's dead-letter place shows it.
    fn watch_dead_letters(&mut self, account: &Account) {
        let (broker, subscription) = (self.broker.clone(), self.subscription.clone());
        let place = self.dead_letter_place();
        let account = account.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut seen = 0;
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
                let count = broker.dead_letter_count(&subscription).await.unwrap_or(seen);
                if count > seen {
                    seen = count;
                    account.line(&format!(
                        "broker      {count} dead letter(s) in {place}, kept for inspection and replay"
                    ));
                    account.record(|s| s.dead_letters = count);
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
                .dead_letter_count(&self.subscription)
                .await
                .map_err(anyhow::Error::from_boxed)?,
        })
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.await.context("a quickstart task panicked")?;
        }
        match self.embedded.take() {
            Some((broker, _)) => broker.shutdown().await?,
            // This run's names are of no use to anyone else: leave the broker as it was.
            None => {
                let removed = self
                    .broker
                    .remove_provisioned(&self.subscription)
                    .await
                    .map_err(anyhow::Error::from_boxed)
                    .context("removing this run's streams or queues")?;
                if !removed.is_empty() {
                    println!("  removed this run's {}", removed.join(", "));
                }
            }
        }
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
            "expected the poison message as the one dead letter, found {} dead letters",
            self.dead_letters
        );
        Ok(())
    }
}

/// A short name for this run: the clock's nanoseconds and the process id, in hex.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}",
        (nanos as u64) ^ (u64::from(std::process::id()) << 40)
    )
}
