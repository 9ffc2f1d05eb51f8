//! NATS JetStream (feature `nats`): [`NatsPublisher`] on the producer side, [`NatsSource`] on the
//! consumer side, [`StreamSpec`] to provision streams.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tower::BoxError> {
//! use courier_middleware::nats::{NatsPublisher, NatsSource, NatsSourceConfig, StreamSpec};
//! use courier_middleware::{Consumer, Delivery};
//!
//! // Producer side: every publish waits for the stream's PubAck; Nats-Msg-Id = the message id.
//! let publisher = NatsPublisher::connect("nats://127.0.0.1:4222").await?;
//! StreamSpec::new("ORDERS", ["orders.>"]).ensure(publisher.jetstream()).await?;
//!
//! // Consumer side: a durable pull consumer per group, created if missing.
//! let source = NatsSource::connect("nats://127.0.0.1:4222", NatsSourceConfig::new("ORDERS", "billing")).await?;
//! let handler = tower::service_fn(|delivery: Delivery| async move {
//!     println!("{} (attempt {})", delivery.message.id, delivery.attempt);
//!     Ok::<_, tower::BoxError>(())
//! });
//! let consumer = Consumer::builder(source, handler).build();
//! # let _ = (publisher, consumer);
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! What the adapter gives:
//!
//! - **A publish succeeds only with a PubAck** from the stream (no ack-less mode); a timeout or
//!   error is a failed attempt, a server that cannot be reached is
//!   [`Unavailable`](courier_core::Unavailable) (the relay pauses), a message NATS can never take is
//!   [`Permanent`](courier_core::Permanent).
//! - **One stored copy per message id within the duplicate window**: `Nats-Msg-Id` is the outbox
//!   id, so a relay that republishes (it crashed before marking the row sent, or a PubAck was lost)
//!   inside the stream's `duplicate_window` stores nothing new. Past the window a repeat is stored
//!   again; the consumer's [`Idempotency`](crate::Idempotency) layer absorbs it.
//! - **At-least-once delivery**: explicit acks, sent only after the handler (and its transaction)
//!   succeeded; a nack redelivers after a delay ([`NatsSourceConfig::delays`], or the handler's
//!   [`Retry::after`](crate::Retry::after)); a consumer that dies leaves its deliveries to the group
//!   after `ack_wait`; a long handler keeps its delivery with progress acks.
//! - **Dead letters**: after the last delivery, or at once on [`Reject`](crate::Reject), the
//!   message is republished to a dead-letter stream (JetStream has none of its own) and only then
//!   terminated.
//! - **Provisioning that never weakens**: [`StreamSpec::ensure`] and [`NatsSource::new`] create
//!   what is missing with durable defaults (file storage, limits retention, a duplicate window,
//!   explicit acks, unlimited `max_deliver`) and refuse, with [`TopologyError::Contradicts`], an
//!   existing stream or consumer that is less durable than asked.
//!
//! What it cannot give:
//!
//! - **Fsync before the ack**: JetStream acknowledges a publish once the message is in the stream's
//!   write buffer and fsyncs it every two minutes by default (`sync_interval`). A machine crash
//!   (not a process crash) can lose acknowledged messages of a single-replica stream. Run streams
//!   with 3 replicas on a cluster (an ack then means a majority has it), or set
//!   `jetstream { sync_interval: always }` on servers that support it (2.10 and later; 2.9 has no
//!   such option). `outbox-relay check` reports both.
//! - **Deduplication forever**: only within the duplicate window (2 minutes by default); make it at
//!   least the relay's retry horizon, or rely on the consumer's idempotency layer.
//! - **Exactly one dead-letter copy**: if the dead-letter publish is acknowledged but the
//!   terminate is lost, the message is delivered again and dead-lettered again (deduplicated within
//!   the dead-letter stream's window).
//!
//! # Ordering
//!
//! JetStream delivers a consumer's messages in stream order, and redeliveries (after a nack or an
//! expired `ack_wait`) whenever they are due, ahead of or behind newer messages. So:
//!
//! - With [`Consumer::builder(..).ordered(true)`](crate::ConsumerBuilder::ordered) and **one
//!   consumer process per group**, messages of a key are handled in publish order: the runtime
//!   retries a failed delivery in place (no nack) while holding the key, and progress acks keep the
//!   delivery from being redelivered meanwhile.
//! - With **several processes in one group**, JetStream hands a key's messages to whichever member
//!   pulls, so per-key order is **not** given. For strict order across members set
//!   [`NatsSourceConfig::max_ack_pending(1)`](NatsSourceConfig::max_ack_pending) (one message in
//!   flight for the whole group), or give each key range its own subject, filter and group.
//! - A message that reached its last delivery is dead-lettered and the key moves on.
//!
//! # The envelope
//!
//! | envelope | NATS |
//! |---|---|
//! | `id` | `Nats-Msg-Id` (the stream's deduplication id) |
//! | `topic` | the subject ([`SubjectMapping`]) and [`NATS_TOPIC_HEADER`] |
//! | `key` | [`NATS_KEY_HEADER`] (and the last subject token with [`SubjectMapping::TopicAndKey`]) |
//! | `tag` | [`NATS_TAG_HEADER`] |
//! | `created_at` | [`NATS_CREATED_AT_HEADER`] (RFC 3339) |
//! | `headers` | headers of the same names, `traceparent` included (names starting `Nats-` or `Courier-` are refused) |
//! | `payload` | the payload |

mod envelope;
mod publisher;
mod source;
mod topology;

pub use envelope::{
    EnvelopeError, NATS_CREATED_AT_HEADER, NATS_KEY_HEADER, NATS_MSG_ID_HEADER, NATS_TAG_HEADER,
    NATS_TOPIC_HEADER, SubjectMapping,
};
pub use publisher::{
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_PUB_ACK_TIMEOUT, NatsPublishError, NatsPublished, NatsPublisher,
};
pub use source::{
    DEFAULT_NATS_DELAYS, NATS_DEAD_LETTER_DELIVERIES_HEADER, NATS_DEAD_LETTER_GROUP_HEADER,
    NATS_DEAD_LETTER_REASON_HEADER, NATS_DEAD_LETTER_SEQUENCE_HEADER,
    NATS_DEAD_LETTER_SUBJECT_HEADER, NATS_MESSAGE_ID_HEADER, NatsReceipt, NatsSource,
    NatsSourceConfig,
};
pub use topology::{DEFAULT_DUPLICATE_WINDOW, Provisioned, StreamSpec, TopologyError};
