//! The short path: one builder that runs the migrations, the relay and idempotent consumers on a
//! pool and a broker address, until a signal. The address picks the broker: broker-lite's
//! `host:port`, NATS JetStream's `nats://…` (courier feature `nats`) or RabbitMQ's `amqp://…`
//! (feature `rabbitmq`); nothing else changes.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use courier::App;
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/payments").await?;
//! App::builder(pool, "127.0.0.1:9876")
//!     .consume("payments", "ORDER_CREATED", |request| async move {
//!         let order: serde_json::Value = request.delivery.message.payload_json()?;
//!         let mut tx = request.tx().lock().await; // the idempotency record commits with this
//!         sqlx::query("INSERT INTO payments (order_id) VALUES ($1)")
//!             .bind(order["id"].as_i64())
//!             .execute(&mut *tx)
//!             .await?;
//!         Ok(())
//!     })
//!     .run_until_signal()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! What it sets up, each with the framework's safe defaults:
//!
//! - the outbox migrations ([`courier_outbox::migrate`]), which also create the consumer tables;
//! - a [`Relay`](courier_outbox::Relay) draining this database's outbox to the broker, each claimed
//!   batch in one call ([`Relay::batch_builder`](courier_outbox::Relay::batch_builder)): on NATS
//!   every PubAck awaited (pipelined, `Nats-Msg-Id` = message id), on RabbitMQ every publisher
//!   confirm (pipelined, `mandatory`); on broker-lite through
//!   [`BrokerLitePublisher`](courier_middleware::BrokerLitePublisher), each claimed batch in one
//!   `SEND_BATCH` request (one group commit per batch, an outcome per message): synchronous sends with a 3 s timeout and
//!   two retries (P1, P4, P5), anything but `SEND_OK` a failed attempt for that message, the
//!   failure table after the last one (P6);
//! - per handler, a clustering consumer of one topic in one group (on NATS a durable pull consumer,
//!   on RabbitMQ a quorum queue with delay and dead-letter queues, provisioned when it subscribes,
//!   [`BrokerAddress::subscribe`](courier_middleware::BrokerAddress::subscribe)), with the
//!   recommended stack:
//!   [`TraceLayer`](courier_middleware::TraceLayer) (continues the message's `traceparent`, L1),
//!   [`CatchPanicLayer`](courier_middleware::CatchPanicLayer) (C2),
//!   [`ConsumeTimeoutLayer`](courier_middleware::ConsumeTimeoutLayer) (C3) and
//!   [`IdempotencyLayer`](courier_middleware::IdempotencyLayer) (C7): the handler gets a
//!   [`TxDelivery`](courier_middleware::TxDelivery) whose transaction holds the idempotency
//!   record, and the broker is acked only after it commits.
//!
//! For anything else (a broker of your own, a layer of your own, a durable inbox) build the pieces from
//! `courier::outbox` and `courier::middleware` directly; this builder is a composition of them.

mod builder;
mod error;
mod publisher;
mod signal;

pub use builder::AppBuilder;
pub use error::Error;

use std::future::Future;
use std::pin::Pin;

use courier_middleware::TxDatabase;
use courier_outbox::Store;
use sqlx::{Database, Pool};
use tokio_util::sync::CancellationToken;

/// A part of the application that runs until the shutdown token is cancelled.
type Part = Box<
    dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Send,
>;

/// The relay and the consumers of one service, on one database and one broker; see the
/// [module docs](self).
pub struct App<DB: Database> {
    pool: Pool<DB>,
    parts: Vec<(String, Part)>,
}

impl<DB> App<DB>
where
    DB: Store + TxDatabase,
    <DB as Database>::Connection: sqlx::migrate::Migrate,
{
    /// A builder for the service on `pool` (Postgres or SQLite) talking to the broker at `broker`:
    /// broker-lite's `host:port` (or a failover list `host1:port;host2:port`, P9), NATS
    /// JetStream's `nats://host:port` (feature `nats`) or RabbitMQ's
    /// `amqp://user:password@host:port/vhost` (feature `rabbitmq`); see
    /// [`BrokerAddress`](courier_middleware::BrokerAddress).
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), courier::app::Error> {
    /// courier::App::builder(pool, "nats://127.0.0.1:4222")
    ///     .consume("payments", "ORDER_CREATED", |_request| async move { Ok(()) })
    ///     .run_until_signal()
    ///     .await
    /// # }
    /// ```
    pub fn builder(pool: Pool<DB>, broker: impl Into<String>) -> AppBuilder<DB> {
        AppBuilder::new(pool, broker.into())
    }

    /// Runs the migrations, then the relay and every consumer, until `shutdown` is cancelled; the
    /// relay finishes or releases the batch in hand and the consumers settle what they hold.
    ///
    /// # Errors
    ///
    /// [`Error`] when the migrations fail, the broker cannot be reached at start, or the relay
    /// stops with an error; the other parts are then shut down too.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        courier_outbox::migrate(&self.pool)
            .await
            .map_err(Error::Migrate)?;
        let stop = shutdown.child_token();
        let mut running = tokio::task::JoinSet::new();
        for (name, part) in self.parts {
            let stop = stop.clone();
            running.spawn(async move { (name, part(stop).await) });
        }
        let mut first_error = None;
        while let Some(joined) = running.join_next().await {
            let (name, result) = joined.map_err(|error| Error::Task(error.to_string()))?;
            if let Err(error) = result {
                // The causes too: the error's own message does not repeat its source's.
                let causes = std::iter::successors(
                    Some(&error as &(dyn std::error::Error + 'static)),
                    |e| e.source(),
                )
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
                tracing::error!(part = %name, error = %causes, "stopping the service");
                stop.cancel();
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`run`](Self::run) until SIGINT (Ctrl-C) or SIGTERM.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            signal::terminated().await;
            tracing::info!("signal received: shutting down");
            on_signal.cancel();
        });
        self.run(shutdown).await
    }
}

impl<DB: Database> std::fmt::Debug for App<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field(
                "parts",
                &self.parts.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
