//! [`AppBuilder`]: what an [`App`](super::App) runs.

use std::future::Future;
use std::time::Duration;

use broker_lite_client::ConsumerConfig;
use courier_middleware::{
    BrokerAddress, BrokerLiteSource, CatchPanicLayer, ConsumeTimeoutLayer, Consumer,
    DEFAULT_CONSUME_TIMEOUT, Delivery, DeliverySource, IdempotencyLayer, Subscription, TraceLayer,
    TxDatabase, TxDelivery,
};
use courier_outbox::{Relay, Store};
use sqlx::{Database, Pool};
use tower::{BoxError, Service, ServiceBuilder};

use super::publisher::AppPublisher;
use super::{App, Error, Part};

/// Builds an [`App`]: [`consume`](Self::consume) once per handler, then
/// [`run_until_signal`](Self::run_until_signal) (or [`build`](Self::build) and
/// [`App::run`]).
///
/// ```no_run
/// # async fn example(pool: sqlx::SqlitePool) -> Result<(), courier::app::Error> {
/// courier::App::builder(pool, "127.0.0.1:9876")
///     .concurrency(4)
///     .consume("audit", "ORDER_CREATED", |request| async move {
///         println!("order {}", request.delivery.message.id);
///         Ok(())
///     })
///     .run_until_signal()
///     .await
/// # }
/// ```
pub struct AppBuilder<DB: Database> {
    pool: Pool<DB>,
    broker: String,
    relay: bool,
    concurrency: usize,
    consume_timeout: Duration,
    consumers: Vec<(String, String, ConsumerFactory<DB>)>,
}

/// Starts one consumer once the builder's settings are final.
type ConsumerFactory<DB> = Box<dyn FnOnce(&Settings<DB>) -> Part + Send>;

/// What every consumer of the app shares.
struct Settings<DB: Database> {
    pool: Pool<DB>,
    broker: String,
    concurrency: usize,
    consume_timeout: Duration,
}

impl<DB> AppBuilder<DB>
where
    DB: Store + TxDatabase,
    <DB as Database>::Connection: sqlx::migrate::Migrate,
{
    pub(super) fn new(pool: Pool<DB>, broker: String) -> Self {
        Self {
            pool,
            broker,
            relay: true,
            concurrency: courier_middleware::DEFAULT_CONCURRENCY,
            consume_timeout: DEFAULT_CONSUME_TIMEOUT,
            consumers: Vec::new(),
        }
    }

    /// Runs `handler` for every message of `topic` delivered to consumer group `group`.
    ///
    /// The handler gets a [`TxDelivery`]: the message and the transaction in which the
    /// idempotency record is written. Write your effects through `request.tx()`; `Ok` commits
    /// both and acks, an error rolls both back and the broker redelivers later (with its delay
    /// levels, then the group's dead-letter topic). A duplicate delivery is acked without
    /// calling the handler. Wrap an error in [`courier_middleware::Reject`] to dead-letter at
    /// once a message that can never succeed.
    ///
    /// The handler's error type is [`BoxError`], so `?` works on any error and `Ok(())` needs no
    /// annotation.
    pub fn consume<F, Fut>(self, group: &str, topic: &str, handler: F) -> Self
    where
        F: Fn(TxDelivery<DB>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.consume_service(group, topic, tower::service_fn(handler))
    }

    /// [`consume`](Self::consume) with a `tower::Service` of your own, for handlers that carry
    /// state or layers.
    pub fn consume_service<H>(mut self, group: &str, topic: &str, handler: H) -> Self
    where
        H: Service<TxDelivery<DB>> + Clone + Send + 'static,
        H::Response: Send + 'static,
        H::Error: Into<BoxError>,
        H::Future: Send + 'static,
    {
        let (group, topic) = (group.to_owned(), topic.to_owned());
        let factory: ConsumerFactory<DB> = {
            let (group, topic) = (group.clone(), topic.clone());
            Box::new(move |settings: &Settings<DB>| consumer_part(settings, group, topic, handler))
        };
        self.consumers.push((group, topic, factory));
        self
    }

    /// Deliveries handled at once per consumer (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// A handler running longer than `timeout` is abandoned, its transaction rolled back and the
    /// delivery redelivered (C3). Default 15 minutes.
    pub fn consume_timeout(mut self, timeout: Duration) -> Self {
        self.consume_timeout = timeout;
        self
    }

    /// Runs no relay: for a service that consumes but never writes to its outbox, or whose outbox
    /// is drained by the `outbox-relay` sidecar.
    pub fn without_relay(mut self) -> Self {
        self.relay = false;
        self
    }

    /// The app.
    pub fn build(self) -> App<DB> {
        let settings = Settings {
            pool: self.pool.clone(),
            broker: self.broker,
            concurrency: self.concurrency,
            consume_timeout: self.consume_timeout,
        };
        let mut parts: Vec<(String, Part)> = Vec::new();
        if self.relay {
            parts.push(("relay".to_owned(), relay_part(&settings)));
        }
        for (group, topic, factory) in self.consumers {
            parts.push((format!("consumer {group} of {topic}"), factory(&settings)));
        }
        App {
            pool: self.pool,
            parts,
        }
    }

    /// [`build`](Self::build), then [`App::run_until_signal`].
    ///
    /// # Errors
    ///
    /// As [`App::run`].
    pub async fn run_until_signal(self) -> Result<(), Error> {
        self.build().run_until_signal().await
    }
}

impl<DB: Database> std::fmt::Debug for AppBuilder<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuilder")
            .field("broker", &self.broker)
            .field("relay", &self.relay)
            .field(
                "consumers",
                &self
                    .consumers
                    .iter()
                    .map(|(g, t, _)| (g, t))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn relay_part<DB: Store>(settings: &Settings<DB>) -> Part {
    let (pool, broker) = (settings.pool.clone(), settings.broker.clone());
    Box::new(move |shutdown| {
        Box::pin(async move {
            let address: BrokerAddress = broker.parse().map_err(Error::Address)?;
            let publisher = AppPublisher::connect(&address, &broker).await?;
            // Each claimed batch goes out in one call: broker-lite stores it with one
            // `SEND_BATCH` request and one group commit, with a per-message outcome (a message
            // the broker refused is retried alone, the others are deleted), instead of one
            // `SEND` and one commit wait per message.
            let relay = Relay::batch_builder(pool, publisher)
                .build()
                .map_err(Error::Relay)?;
            relay.run(shutdown).await.map_err(Error::Relay)
        })
    })
}

fn consumer_part<DB, H>(settings: &Settings<DB>, group: String, topic: String, handler: H) -> Part
where
    DB: TxDatabase,
    H: Service<TxDelivery<DB>> + Clone + Send + 'static,
    H::Response: Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
{
    let pool = settings.pool.clone();
    let broker = settings.broker.clone();
    let (concurrency, timeout) = (settings.concurrency, settings.consume_timeout);
    Box::new(move |shutdown| {
        Box::pin(async move {
            let address: BrokerAddress = broker.parse().map_err(Error::Address)?;
            let stack = ServiceBuilder::new()
                .layer(TraceLayer::new())
                .layer(CatchPanicLayer::new())
                .layer(ConsumeTimeoutLayer::new(timeout))
                .layer(IdempotencyLayer::new(pool))
                .service(handler);
            if let BrokerAddress::BrokerLite(addresses) = &address {
                let source = BrokerLiteSource::connect(
                    addresses.as_str(),
                    ConsumerConfig::new(&group, &topic),
                )
                .await
                .map_err(|source| Error::Broker {
                    addresses: broker.clone(),
                    part: format!("consumer group {group}"),
                    source,
                })?;
                run_consumer(source, stack, concurrency, timeout, shutdown).await;
                return Ok(());
            }
            // NATS or RabbitMQ: the source provisions the group's stream consumer or queues (with
            // their delay and dead-letter parts) with durable defaults when it subscribes.
            let source = address
                .subscribe(&Subscription::new(&topic, &group))
                .await
                .map_err(|source| Error::Connect {
                    broker: address.to_string(),
                    part: format!("consumer group {group}"),
                    source,
                })?;
            run_consumer(source, stack, concurrency, timeout, shutdown).await;
            Ok(())
        })
    })
}

/// Runs the consumer of `source` with the app's stack until `shutdown`.
async fn run_consumer<S, H>(
    source: S,
    stack: H,
    concurrency: usize,
    timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) where
    S: DeliverySource,
    H: Service<Delivery> + Clone + Send + 'static,
    H::Response: Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
{
    Consumer::builder(source, stack)
        .concurrency(concurrency)
        .consume_timeout(timeout)
        .declare_idempotent()
        .build()
        .run(shutdown)
        .await;
}
