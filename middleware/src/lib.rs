//! Tower layers for reliable producers and consumers, and a consumer runtime.
//!
//! A consumer handler is a `tower::Service<Delivery>`: `Ok` acks, any error asks for a
//! redelivery, [`Reject`] dead-letters at once, a panic or a timeout redelivers. There is no way to
//! ack a failed delivery: only the [`Consumer`] runtime holds the broker receipt, and it acks only
//! after `Ok`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use courier_middleware::{
//!     CatchPanicLayer, ConsumeMetricsLayer, ConsumeTimeoutLayer, Consumer, Delivery,
//!     LocalRetryLayer, MemorySource, Reject, TraceLayer,
//! };
//! use courier_core::Message;
//! use tokio_util::sync::CancellationToken;
//! use tower::ServiceBuilder;
//!
//! let source = MemorySource::new("billing"); // broker-lite, NATS, RabbitMQ: a DeliverySource
//! source.push(Message::json("orders.created", &serde_json::json!({"id": 7})).unwrap());
//! source.push(Message::new("orders.created", "not json"));
//!
//! let handler = ServiceBuilder::new()
//!     .layer(TraceLayer::new())
//!     .layer(ConsumeMetricsLayer::new())
//!     .layer(LocalRetryLayer::default())
//!     .layer(CatchPanicLayer::new())
//!     .layer(ConsumeTimeoutLayer::default())
//!     .service_fn(|delivery: Delivery| async move {
//!         let order: serde_json::Value = delivery.message.payload_json().map_err(Reject::new)?;
//!         println!("order {}", order["id"]);
//!         Ok::<_, tower::BoxError>(())
//!     });
//!
//! let shutdown = CancellationToken::new();
//! let running = tokio::spawn(Consumer::builder(source.clone(), handler).build().run(shutdown.clone()));
//! source.wait_until(|s| s.acked().len() == 1 && s.dead_letters().len() == 1).await;
//! shutdown.cancel();
//! running.await.unwrap();
//! # }
//! ```
//!
//! # What is in it, by safeguard (`SAFEGUARDS.md`)
//!
//! | id | feature |
//! |---|---|
//! | C1 | [`Disposition`]: `Ok` acks, errors redeliver or dead-letter; [`Consumer`] holds the receipts |
//! | C2 | [`CatchPanic`] (and the runtime itself) turn panics into redeliveries |
//! | C3 | the runtime abandons and redelivers a call after 15 minutes ([`ConsumerBuilder::consume_timeout`]); [`ConsumeTimeout`] per handler |
//! | C4 | [`Inbox`]: [`InboxStore`] stores and acks, [`InboxWorker`] processes with retries and dead letters (Postgres, SQLite or MySQL) |
//! | C5 | [`ConsumeModel`]; the runtime warns about broadcasting without [`Idempotency`] |
//! | C6 | [`ConsumerBuilder::batch_size`], 1 by default; [`BatchLayer`] for handlers of `Vec<Delivery>` |
//! | C7 | [`Idempotency`]: the record and the handler's writes in one transaction, on Postgres, SQLite or MySQL ([`TxDatabase`]) |
//! | C8 | [`ConsumerBuilder::max_deliveries`] (16), [`Reject`], [`DeliverySource::dead_letter`] |
//! | P1 | the broker-lite publisher fails every status but `SEND_OK` (opt-out per status: `accept_status`); [`RequireSendOk`] with [`SendStatus`] for other publishers |
//! | P2, P8 | [`Producer`]: `send`, `send_async` ([`SendHandle`], `#[must_use]`), `send_with_callback` |
//! | P3 | [`OneWay`]: only topics declared loss-tolerant, never critical ones; counted and logged |
//! | P4 | [`SendRetryLayer`], 2 retries with exponential backoff and jitter |
//! | P5 | [`SendTimeout`], 3 s by default |
//! | P6 | [`FailureFallback`] into `outbox.failures` (Postgres only) |
//! | L1, L4 | [`Trace`] (consumer span continuing `traceparent`), [`TracePublish`] (injects it) |
//! | L3 | [`ConsumeMetrics`] and the runtime's ack / redelivery / dead-letter counters |
//!
//! # Brokers
//!
//! A broker plugs in as a [`DeliverySource`] (consumer side: pull, ack, nack with a delay,
//! dead-letter) and as a `tower::Service<courier_core::Message>` whose response implements
//! [`HasSendStatus`] (producer side). A publisher is safe by default: it fails every status but
//! `SEND_OK` itself (accepting another is an explicit, logged opt-out), wraps refusals of a message
//! in `courier_core::Permanent` and failures to reach the broker in
//! `courier_core::Unavailable` (the relay then pauses instead of counting attempts).
//! [`MemorySource`] is an in-process source for tests and examples.
//!
//! | broker | feature | publisher | source |
//! |---|---|---|---|
//! | broker-lite (bundled) | `broker-lite` | `BrokerLitePublisher` | `BrokerLiteSource` (immediate dead letters, delay levels) |
//! | NATS JetStream | `nats` | `nats::NatsPublisher` (PubAck awaited, `Nats-Msg-Id` = message id) | `nats::NatsSource` (durable pull consumer, nak delays, dead-letter stream) |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `postgres` | yes | [`Idempotency`], [`Inbox`], [`FailureFallback`] on Postgres (tables in schema `courier_inbox`, created by `courier_outbox::MIGRATOR`); [`PgTx`] |
//! | `sqlite` | no | [`Idempotency`] and [`Inbox`] on SQLite (tables `courier_inbox_*`, created by `courier_outbox::SQLITE_MIGRATOR`); `SqliteTx` |
//! | `mysql` | no | [`Idempotency`] and [`Inbox`] on MySQL 8.0.1+ / MariaDB 10.6+ (tables `courier_inbox_*`, created by `courier_outbox::MYSQL_MIGRATOR`); `MySqlTx` |
//!
//! The transactional types take the database as a type parameter that defaults to Postgres
//! (`Inbox<DB = Postgres>`, `TxDelivery<DB = Postgres>` …): `IdempotencyLayer::new(pool)` and
//! `Inbox::new(pool)` pick it from the pool. On SQLite the handler's transaction is
//! `BEGIN IMMEDIATE` and holds the database's write lock while the handler runs, so handlers run
//! one at a time per database file; see [`TxDatabase`]. The inbox's idle workers are woken
//! in-process there (SQLite has no `NOTIFY`), rows from other processes by polling. MySQL wakes
//! them in-process too, plus polling; its handler transaction is a plain `BEGIN`, and a handler
//! must return its database errors: see [`TxDatabase`] for what InnoDB does on a deadlock.
//! | `broker-lite` | yes | `BrokerLitePublisher` and `BrokerLiteSource` for the bundled broker (adds the `broker-lite` crate) |
//! | `rabbitmq` | no | `RabbitMqPublisher`, `RabbitMqSource` and `RabbitMqTopology` for RabbitMQ (adds lapin) |
//! | `nats` | no | the `nats` module: `NatsPublisher`, `NatsSource`, `StreamSpec` for NATS JetStream (adds async-nats) |

#![forbid(unsafe_code)]

mod boxed;
mod brokers;
#[cfg(feature = "sqlite")]
mod clock;
mod consumer;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod database;
mod delivery;
mod error;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod idempotency;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod inbox;
mod memory;
#[cfg(feature = "mysql")]
mod mysql;
mod producer;
mod runtime;
mod source;
mod timeout;
mod trace_context;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod tx;

/// The NATS client the `nats` adapters use (connect options, JetStream context).
#[cfg(feature = "nats")]
pub use async_nats;
#[cfg(any(feature = "broker-lite", feature = "nats", feature = "rabbitmq"))]
pub use brokers::address::{
    AnyPublisher, BrokerAddress, BrokerAddressError, Published, Subscription,
};
#[cfg(any(feature = "broker-lite", feature = "nats", feature = "rabbitmq"))]
pub use brokers::any_source::{AnyReceipt, AnySource};
#[cfg(feature = "broker-lite")]
pub use brokers::broker_lite::{
    BROKER_LITE_CREATED_AT, BrokerLitePublisher, BrokerLiteReceipt, BrokerLiteSource,
};
#[cfg(feature = "nats")]
pub use brokers::nats::{NatsPublisher, NatsSource, NatsSourceConfig};
#[cfg(feature = "rabbitmq")]
pub use brokers::rabbitmq::{
    AuditFinding, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_DELAY_LEVELS, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PREFETCH, QueueSpec, QueueType, RABBITMQ_CREATED_AT_HEADER,
    RABBITMQ_DEAD_LETTER_REASON_HEADER, RABBITMQ_KEY_HEADER, RABBITMQ_ORIGINAL_QUEUE_HEADER,
    RABBITMQ_REDELIVERIES_HEADER, RABBITMQ_TAG_HEADER, RABBITMQ_TOPIC_HEADER, RabbitMqError,
    RabbitMqPublisher, RabbitMqReceipt, RabbitMqSource, RabbitMqSourceConfig, RabbitMqTopology,
};
pub use consumer::batch::{Batch, BatchFailed, BatchLayer};
pub use consumer::catch_panic::{CatchPanic, CatchPanicLayer};
pub use consumer::metrics::{ConsumeMetrics, ConsumeMetricsLayer};
pub use consumer::retry::{LocalRetry, LocalRetryLayer, LocalRetryPolicy};
pub use consumer::trace::{Trace, TraceLayer};
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub use database::{DefaultDatabase, TxDatabase};
pub use delivery::{AsDelivery, Delivery};
pub use error::{Disposition, Elapsed, Panicked, Reject, Retry};
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub use idempotency::{
    BatchedIdempotency, BatchedIdempotencyLayer, DEFAULT_IDEMPOTENCY_WINDOW, Handled, Idempotency,
    IdempotencyKey, IdempotencyLayer, LateDelivery,
};
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub use inbox::{Inbox, InboxDeadLetter, InboxStore, InboxWorker, Stored};
/// The RabbitMQ client the `rabbitmq` adapters use (connection properties, TLS features).
#[cfg(feature = "rabbitmq")]
pub use lapin;
pub use memory::{MemoryReceipt, MemorySource};
#[cfg(feature = "postgres")]
pub use producer::fallback::{FailureFallback, FailureFallbackLayer, NotParked, Parked};
pub use producer::oneway::{OneWay, OneWayLayer, OneWayRefused};
pub use producer::retry::SendRetryLayer;
pub use producer::send::{Producer, SendHandle};
pub use producer::status::{
    HasSendStatus, NotSendOk, RequireSendOk, RequireSendOkLayer, SendStatus,
};
pub use producer::trace::{TracePublish, TracePublishLayer};
pub use runtime::{Consumer, ConsumerBuilder, DEFAULT_CONCURRENCY, DEFAULT_MAX_DELIVERIES};
pub use source::{ConsumeModel, DeliverySource, NackOutcome, Pulled};
pub use timeout::{
    ConsumeTimeout, ConsumeTimeoutLayer, Consuming, DEFAULT_CONSUME_TIMEOUT, DEFAULT_SEND_TIMEOUT,
    SendTimeout, SendTimeoutLayer, Sending, Timeout, TimeoutKind, TimeoutLayer,
};
pub use tower::BoxError;
pub use trace_context::{TRACEPARENT, TraceParent};
#[cfg(feature = "mysql")]
pub use tx::{MySqlTx, MySqlTxGuard};
#[cfg(feature = "postgres")]
pub use tx::{PgTx, PgTxGuard};
#[cfg(feature = "sqlite")]
pub use tx::{SqliteTx, SqliteTxGuard};
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub use tx::{Tx, TxDelivery, TxGuard};

/// NATS JetStream (feature `nats`): publisher, source, stream provisioning; see the guarantees
/// and ordering sections there.
#[cfg(feature = "nats")]
pub mod nats {
    pub use crate::brokers::nats::*;
}

/// The response futures of the layers. `ConsumeTimeout` and `SendTimeout` share `TimeoutFuture`, the send retry
/// shares `LocalRetryFuture`.
pub mod future {
    pub use crate::boxed::BoxResponseFuture;
    pub use crate::consumer::catch_panic::future::ResponseFuture as CatchPanicFuture;
    pub use crate::consumer::metrics::future::ResponseFuture as ConsumeMetricsFuture;
    pub use crate::consumer::retry::future::ResponseFuture as LocalRetryFuture;
    pub use crate::consumer::trace::future::ResponseFuture as TraceFuture;
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    pub use crate::idempotency::future::ResponseFuture as IdempotencyFuture;
    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    pub use crate::inbox::future::ResponseFuture as InboxStoreFuture;
    pub use crate::producer::status::ResponseFuture as RequireSendOkFuture;
    pub use crate::producer::trace::ResponseFuture as TracePublishFuture;
    pub use crate::timeout::future::ResponseFuture as TimeoutFuture;
}
