//! RabbitMQ (feature `rabbitmq`, over lapin): [`RabbitMqPublisher`] on the producer side,
//! [`RabbitMqSource`] on the consumer side, [`RabbitMqTopology`] for exchanges and queues.
//!
//! # Guarantees given
//!
//! - **Publishing is confirmed**: `Ok` only after the broker's publisher-confirm ack of this
//!   message, which for a durable queue means written (a quorum queue: replicated to a majority).
//!   Confirms, `mandatory` and persistent delivery are always on; nothing turns them off.
//! - **Unroutable is a failure**: a message no queue is bound for comes back and fails its
//!   publish; the relay keeps the row.
//! - **Deduplication key**: `message_id` = the envelope id, so the consumer's idempotency layer
//!   recognises a message the relay published twice (after a lost confirm).
//! - **Ack after the handler**: the source acks only when the runtime says so; a lost connection
//!   returns unacked deliveries to the queue.
//! - **Redelivery with delay and dead letters**: delay queues per level and a dead-letter queue,
//!   every copy confirmed before the original is acked.
//! - **Durable topology by default**: quorum queues, durable exchanges, idempotent declaration, a
//!   clear error on a conflicting existing queue.
//!
//! # Guarantees not given
//!
//! - **No broker-side deduplication**: RabbitMQ stores a message published twice twice (AMQP has
//!   no idempotent publish); consumers deduplicate (the idempotency layer).
//! - **Order**: one queue keeps publish order for one publisher channel, but the publisher spreads
//!   concurrent publishes over channels (the relay publishes one key at a time, so a key's order
//!   holds), and a delayed redelivery goes to the back of the queue. Ordered consumption needs
//!   [`RabbitMqSourceConfig::ordered`] (single active consumer) and the runtime's ordered mode.
//! - **Classic queues** (an opt-out) keep a confirmed message on one node only.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tower::BoxError> {
//! use courier_middleware::{Consumer, Delivery, RabbitMqPublisher, RabbitMqSource, RabbitMqSourceConfig};
//!
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
//! // Consumer side first: it declares the exchange `orders`, the queue `billing` and its binding.
//! let source = RabbitMqSource::connect(url, RabbitMqSourceConfig::new("billing").bind("orders", "#")).await?;
//! // Producer side: what the outbox relay publishes through.
//! let publisher = RabbitMqPublisher::connect(url).await?;
//! let handler = tower::service_fn(|delivery: Delivery| async move {
//!     println!("{} (attempt {})", delivery.message.id, delivery.attempt);
//!     Ok::<_, tower::BoxError>(())
//! });
//! let consumer = Consumer::builder(source, handler).build();
//! # let _ = (publisher, consumer);
//! # Ok(()) }
//! ```

mod config;
mod connection;
mod envelope;
mod error;
mod publisher;
mod source;
mod topology;

pub use config::{DEFAULT_DELAY_LEVELS, DEFAULT_PREFETCH, RabbitMqSourceConfig};
pub use envelope::{
    RABBITMQ_CREATED_AT_HEADER, RABBITMQ_DEAD_LETTER_REASON_HEADER, RABBITMQ_KEY_HEADER,
    RABBITMQ_ORIGINAL_QUEUE_HEADER, RABBITMQ_REDELIVERIES_HEADER, RABBITMQ_TAG_HEADER,
    RABBITMQ_TOPIC_HEADER,
};
pub use error::RabbitMqError;
pub use publisher::{DEFAULT_CONFIRM_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, RabbitMqPublisher};
pub use source::{RabbitMqReceipt, RabbitMqSource};
pub(crate) use topology::is_not_found;
pub use topology::{AuditFinding, QueueSpec, QueueType, RabbitMqTopology};
