//! Messages as producers send them and as admins read them back.

use std::collections::BTreeMap;

use bytes::Bytes;
use uuid::Uuid;

use crate::storage::StoredRecord;

/// A message to send.
///
/// ```
/// use broker_lite::broker::SendRequest;
///
/// let request = SendRequest::new("orders", "order 42 created")
///     .with_key("order-42")
///     .with_tag("created")
///     .with_property("trace-id", "abc");
/// assert_eq!(request.queue_id, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendRequest {
    /// Topic name.
    pub topic: String,
    /// The queue; `None` picks it from the key's hash (one key stays in one queue, in order), or
    /// round robin when there is no key.
    pub queue_id: Option<u32>,
    /// Message id (UUIDv7 by default); kept through redelivery and dead lettering.
    pub message_id: Uuid,
    /// Optional key: ordering and lookup.
    pub key: Option<String>,
    /// Optional tag: consumer-side filtering.
    pub tag: Option<String>,
    /// String properties (headers). Names starting with `%` are reserved for the broker.
    pub properties: BTreeMap<String, String>,
    /// Payload.
    pub body: Bytes,
    /// When the producer created the message, ms since the Unix epoch; `0` means "now".
    pub born_timestamp_ms: u64,
}

impl SendRequest {
    /// A message with a fresh UUIDv7 id, no key, tag or properties.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        SendRequest {
            topic: topic.into(),
            queue_id: None,
            message_id: Uuid::now_v7(),
            key: None,
            tag: None,
            properties: BTreeMap::new(),
            body: body.into(),
            born_timestamp_ms: 0,
        }
    }

    /// Sets the message id.
    pub fn with_message_id(mut self, id: Uuid) -> Self {
        self.message_id = id;
        self
    }

    /// Sets the queue explicitly.
    pub fn with_queue(mut self, queue_id: u32) -> Self {
        self.queue_id = Some(queue_id);
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Adds a property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Sets the born timestamp (ms since the Unix epoch).
    pub fn with_born_timestamp_ms(mut self, ms: u64) -> Self {
        self.born_timestamp_ms = ms;
        self
    }
}

/// The status of a send: the wire type, one definition for the broker and its clients.
pub use broker_lite_client::protocol::SendStatus;

/// Where a sent message went and how durable it is.
///
/// Not the wire's `SendResult`: this one also names the topic, which the wire answer leaves out
/// (the producer knows it); the server drops it when it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "check the send status: anything but SendOk is not known durable (safeguard P1, P8)"]
#[non_exhaustive]
pub struct SendResult {
    /// Durability status.
    pub status: SendStatus,
    /// The message id.
    pub message_id: Uuid,
    /// The topic.
    pub topic: String,
    /// The queue the message went to.
    pub queue_id: u32,
    /// Its offset in the queue.
    pub queue_offset: u64,
    /// Whether the broker already held a message with this id on this topic (a producer or relay
    /// retry inside its deduplication window) and stored nothing new: the queue, offset and status
    /// are then the first copy's.
    pub duplicate: bool,
}

/// A message read back from the log (admin lookups, dead letters): the wire's
/// [`MessageView`](broker_lite_client::protocol::MessageView), under the name the broker's API
/// has always used. Its properties include the broker's `%`-prefixed ones (origin of a dead
/// letter ...).
pub use broker_lite_client::protocol::MessageView as StoredMessage;

impl From<StoredRecord> for StoredMessage {
    fn from(r: StoredRecord) -> Self {
        let mut m = StoredMessage::new(r.topic, r.queue_id, r.queue_offset, r.message_id, r.body);
        m.key = r.key;
        m.tag = r.tag;
        m.properties = r.properties;
        m.born_timestamp_ms = r.born_timestamp_ms;
        m.stored_timestamp_ms = r.stored_timestamp_ms;
        m
    }
}

/// Broker property names (all start with `%`).
pub(crate) mod props {
    /// Topic a dead letter came from.
    pub(crate) const ORIGIN_TOPIC: &str = "%ORIGIN_TOPIC%";
    /// Queue a dead letter came from.
    pub(crate) const ORIGIN_QUEUE: &str = "%ORIGIN_QUEUE%";
    /// Offset a dead letter came from.
    pub(crate) const ORIGIN_OFFSET: &str = "%ORIGIN_OFFSET%";
    /// Redeliveries before dead lettering.
    pub(crate) const RECONSUME_TIMES: &str = "%RECONSUME_TIMES%";
    /// Why a consumer dead-lettered the message at once (`Broker::dead_letter`).
    pub(crate) const DEAD_LETTER_REASON: &str = "%DEAD_LETTER_REASON%";
    /// A redriven message is delivered to this group only.
    pub(crate) const TARGET_GROUP: &str = "%TARGET_GROUP%";
}
