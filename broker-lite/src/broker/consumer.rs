//! What consumers send and receive: subscriptions, pulls, deliveries and settlements.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

pub use super::membership::SessionId;
pub use super::receipt::Receipt;

/// How a group's members share a topic (safeguard C5): the wire's
/// [`ConsumeModel`](broker_lite_client::protocol::ConsumeModel), under RocketMQ's name
/// (`MessageModel`) that the broker's API uses.
pub use broker_lite_client::protocol::ConsumeModel as MessageModel;

/// A member joining (or refreshing its place in) a consumer group for one topic.
///
/// Not the wire's `Subscription`: "every tag" is `None` here (or `"*"`), the empty list on the
/// wire.
///
/// ```
/// use broker_lite::broker::{ConsumerSpec, MessageModel};
///
/// let spec = ConsumerSpec::new("billing", "billing-1", "orders")
///     .with_tags(["created", "paid"])
///     .ordered(true);
/// assert_eq!(spec.model, MessageModel::Clustering);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerSpec {
    /// Consumer group.
    pub group: String,
    /// This member's id, unique within the group.
    pub client_id: String,
    /// Topic to consume.
    pub topic: String,
    /// Clustering or broadcasting; all members of a group must agree.
    pub model: MessageModel,
    /// Only messages with one of these tags; `None` (or a list holding `"*"`) takes all. Skipped
    /// messages count as consumed.
    pub tag_filter: Option<Vec<String>>,
    /// Ordered consumption: at most one message per queue in flight, the next one only after the
    /// ack; a nack redelivers the same message in place after its delay.
    pub ordered: bool,
    /// The connection this member subscribes over: it leaves the group when
    /// [`Broker::close_session`](super::Broker::close_session) ends it. `None` (the embedded
    /// default): it stays until it unsubscribes or misses heartbeats.
    pub session: Option<SessionId>,
}

impl ConsumerSpec {
    /// A clustering, unordered member taking every tag.
    pub fn new(
        group: impl Into<String>,
        client_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        ConsumerSpec {
            group: group.into(),
            client_id: client_id.into(),
            topic: topic.into(),
            model: MessageModel::Clustering,
            tag_filter: None,
            ordered: false,
            session: None,
        }
    }

    /// Sets the message model.
    pub fn with_model(mut self, model: MessageModel) -> Self {
        self.model = model;
        self
    }

    /// Takes only messages with one of `tags`.
    pub fn with_tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tag_filter = Some(tags.into_iter().map(Into::into).collect());
        self
    }

    /// Sets ordered consumption.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Ties the membership to `session` (a client connection): see
    /// [`Broker::close_session`](super::Broker::close_session).
    pub fn with_session(mut self, session: SessionId) -> Self {
        self.session = Some(session);
        self
    }
}

/// A request for messages.
///
/// Not the wire's `PullRequest`: this one takes a [`Duration`] and a `usize` batch size for the
/// in-process API (the wire carries milliseconds and a `u32`).
///
/// ```
/// use std::time::Duration;
/// use broker_lite::broker::PullRequest;
///
/// let pull = PullRequest::new("billing", "billing-1", "orders")
///     .with_max_messages(16)
///     .with_long_poll(Duration::from_secs(20));
/// assert_eq!(pull.max_messages, 16);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullRequest {
    /// Consumer group.
    pub group: String,
    /// The pulling member.
    pub client_id: String,
    /// Topic.
    pub topic: String,
    /// Most messages to return (safeguard C6: default 1 for precise control).
    pub max_messages: usize,
    /// How long to wait for a message when none is ready (capped by `max_long_poll`).
    pub long_poll: Duration,
    /// Most bytes of deliveries to return (bodies, headers and receipts, as the server encodes
    /// them); at least one message is returned whatever its size. Default unbounded; the server
    /// sets its frame limit here.
    pub max_bytes: usize,
}

impl PullRequest {
    /// A pull of one message without waiting.
    pub fn new(
        group: impl Into<String>,
        client_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        PullRequest {
            group: group.into(),
            client_id: client_id.into(),
            topic: topic.into(),
            max_messages: 1,
            long_poll: Duration::ZERO,
            max_bytes: usize::MAX,
        }
    }

    /// Sets the batch size.
    pub fn with_max_messages(mut self, max: usize) -> Self {
        self.max_messages = max;
        self
    }

    /// Sets the byte budget of the answer (see [`max_bytes`](Self::max_bytes)).
    pub fn with_max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// Sets the long-poll wait.
    pub fn with_long_poll(mut self, wait: Duration) -> Self {
        self.long_poll = wait;
        self
    }
}

/// A message handed to a consumer. Settle it with [`Broker::ack`](super::Broker::ack) or
/// [`Broker::nack`](super::Broker::nack) using its [`receipt`](Delivery::receipt).
///
/// Not the wire's `Delivery`: this one holds the decoded [`Receipt`] the in-process API settles
/// with (the wire carries its encoding, `Receipt::to_bytes`), next to the message's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Message id (the same on every redelivery).
    pub message_id: Uuid,
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: u32,
    /// Offset within the queue.
    pub queue_offset: u64,
    /// Key.
    pub key: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Properties.
    pub properties: BTreeMap<String, String>,
    /// Payload.
    pub body: Bytes,
    /// When the producer created it, ms since the Unix epoch.
    pub born_timestamp_ms: u64,
    /// When the broker stored it, ms since the Unix epoch.
    pub stored_timestamp_ms: u64,
    /// How many times it was redelivered after a nack or consume timeout (0 the first time).
    pub reconsume_times: u32,
    /// When this group first had it delivered, ms since the Unix epoch.
    pub first_delivered_at_ms: u64,
    /// The handle to settle this delivery with.
    pub receipt: Receipt,
}

/// What a nack did (RECONSUME_LATER, safeguards C1, C8): the wire's
/// [`NackResult`](broker_lite_client::protocol::NackResult), under the name the broker's API uses.
pub use broker_lite_client::protocol::NackResult as NackOutcome;
