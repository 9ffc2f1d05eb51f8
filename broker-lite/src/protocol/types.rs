//! The data carried by commands, with their binary encodings.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::error::DecodeError;
use super::wire::*;

/// A type with a compact binary encoding.
pub(crate) trait Wire: Sized {
    /// Appends the encoding.
    fn put(&self, buf: &mut BytesMut);
    /// Reads one value.
    fn get(buf: &mut Bytes) -> Result<Self, DecodeError>;
}

/// A message to send.
///
/// ```
/// use broker_lite::protocol::Message;
///
/// let message = Message::new("orders", "order 42 created").with_key("order-42").with_tag("created");
/// assert_eq!(message.queue_id, None); // the broker picks the queue from the key
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Queue within the topic; `None` lets the broker choose (by key hash when there is a key).
    pub queue_id: Option<u32>,
    /// Message id chosen by the producer (e.g. the outbox id); `None` lets the broker assign one.
    pub message_id: Option<Uuid>,
    /// Optional key (ordering and lookup).
    pub key: Option<String>,
    /// Optional tag (filtering).
    pub tag: Option<String>,
    /// String properties (headers).
    pub properties: BTreeMap<String, String>,
    /// Payload.
    pub body: Bytes,
}

impl Message {
    /// A message for `topic` with `body`, no key, tag or properties.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            queue_id: None,
            message_id: None,
            key: None,
            tag: None,
            properties: BTreeMap::new(),
            body: body.into(),
        }
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
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Sets the queue explicitly.
    pub fn with_queue(mut self, queue_id: u32) -> Self {
        self.queue_id = Some(queue_id);
        self
    }

    /// Sets the message id.
    pub fn with_message_id(mut self, id: Uuid) -> Self {
        self.message_id = Some(id);
        self
    }
}

impl Wire for Message {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.topic);
        put_opt_u32(buf, self.queue_id);
        match &self.message_id {
            Some(id) => {
                buf.put_u8(1);
                put_uuid(buf, id);
            }
            None => buf.put_u8(0),
        }
        put_opt_str(buf, self.key.as_deref());
        put_opt_str(buf, self.tag.as_deref());
        put_map(buf, &self.properties);
        put_bytes(buf, &self.body);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        let topic = get_str(buf, "topic")?;
        let queue_id = get_opt_u32(buf, "queue id")?;
        let message_id = if get_bool(buf, "message id")? {
            Some(get_uuid(buf, "message id")?)
        } else {
            None
        };
        Ok(Message {
            topic,
            queue_id,
            message_id,
            key: get_opt_str(buf, "key")?,
            tag: get_opt_str(buf, "tag")?,
            properties: get_map(buf, "properties")?,
            body: get_bytes(buf, "body")?,
        })
    }
}

/// The status of a send (safeguard P1). Only [`SendStatus::SendOk`] means "stored as configured".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendStatus {
    /// Stored (and fsynced under `SYNC_FLUSH`, replicated under `SYNC_MASTER`).
    SendOk,
    /// Written, but not fsynced within the sync flush timeout.
    FlushDiskTimeout,
    /// The follower did not confirm within the timeout.
    FlushSlaveTimeout,
    /// `SYNC_MASTER` without a follower.
    SlaveNotAvailable,
}

impl SendStatus {
    fn as_u8(self) -> u8 {
        match self {
            SendStatus::SendOk => 0,
            SendStatus::FlushDiskTimeout => 1,
            SendStatus::FlushSlaveTimeout => 2,
            SendStatus::SlaveNotAvailable => 3,
        }
    }
}

impl Wire for SendStatus {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(self.as_u8());
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(match get_u8(buf, "send status")? {
            0 => SendStatus::SendOk,
            1 => SendStatus::FlushDiskTimeout,
            2 => SendStatus::FlushSlaveTimeout,
            3 => SendStatus::SlaveNotAvailable,
            _ => return Err(DecodeError::Invalid("send status")),
        })
    }
}

/// The answer to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a send result must be checked: only SendOk means the message is stored (P1, P8)"]
pub struct SendResult {
    /// Durability status.
    pub status: SendStatus,
    /// The message id.
    pub message_id: Uuid,
    /// The queue the message went to.
    pub queue_id: u32,
    /// Its offset within that queue.
    pub queue_offset: u64,
}

impl SendResult {
    /// Whether the status is [`SendStatus::SendOk`].
    pub fn is_ok(&self) -> bool {
        self.status == SendStatus::SendOk
    }
}

impl Wire for SendResult {
    fn put(&self, buf: &mut BytesMut) {
        self.status.put(buf);
        put_uuid(buf, &self.message_id);
        buf.put_u32(self.queue_id);
        buf.put_u64(self.queue_offset);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(SendResult {
            status: SendStatus::get(buf)?,
            message_id: get_uuid(buf, "message id")?,
            queue_id: get_u32(buf, "queue id")?,
            queue_offset: get_u64(buf, "queue offset")?,
        })
    }
}

/// How a consumer group shares messages (safeguard C5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConsumeModel {
    /// Each message goes to one member of the group.
    #[default]
    Clustering,
    /// Every member gets every message.
    Broadcasting,
}

impl Wire for ConsumeModel {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(match self {
            ConsumeModel::Clustering => 0,
            ConsumeModel::Broadcasting => 1,
        });
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match get_u8(buf, "consume model")? {
            0 => Ok(ConsumeModel::Clustering),
            1 => Ok(ConsumeModel::Broadcasting),
            _ => Err(DecodeError::Invalid("consume model")),
        }
    }
}

/// A consumer joining a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// This member's id, unique within the group.
    pub consumer_id: String,
    /// Clustering or broadcasting.
    pub model: ConsumeModel,
    /// Only messages with one of these tags are delivered (empty: all).
    pub tags: Vec<String>,
    /// Ordered consumption: at most one message per queue in flight.
    pub ordered: bool,
}

impl Wire for Subscription {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.group);
        put_str(buf, &self.topic);
        put_str(buf, &self.consumer_id);
        self.model.put(buf);
        put_list(buf, &self.tags, |b, t| put_str(b, t));
        buf.put_u8(u8::from(self.ordered));
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Subscription {
            group: get_str(buf, "group")?,
            topic: get_str(buf, "topic")?,
            consumer_id: get_str(buf, "consumer id")?,
            model: ConsumeModel::get(buf)?,
            tags: get_list(buf, 4, "tags", |b| get_str(b, "tag"))?,
            ordered: get_bool(buf, "ordered")?,
        })
    }
}

/// A group member, for heartbeat and unsubscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Consumer group.
    pub group: String,
    /// The member's id.
    pub consumer_id: String,
}

impl Wire for Member {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.group);
        put_str(buf, &self.consumer_id);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Member {
            group: get_str(buf, "group")?,
            consumer_id: get_str(buf, "consumer id")?,
        })
    }
}

/// A pull with long polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Consumer group.
    pub group: String,
    /// The member's id.
    pub consumer_id: String,
    /// Topic.
    pub topic: String,
    /// At most this many deliveries.
    pub max_messages: u32,
    /// How long the broker may wait for a message when none is ready, in milliseconds.
    pub long_poll_ms: u64,
}

impl Wire for PullRequest {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.group);
        put_str(buf, &self.consumer_id);
        put_str(buf, &self.topic);
        buf.put_u32(self.max_messages);
        buf.put_u64(self.long_poll_ms);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(PullRequest {
            group: get_str(buf, "group")?,
            consumer_id: get_str(buf, "consumer id")?,
            topic: get_str(buf, "topic")?,
            max_messages: get_u32(buf, "max messages")?,
            long_poll_ms: get_u64(buf, "long poll")?,
        })
    }
}

/// A stored message as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageView {
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: u32,
    /// Offset within the queue.
    pub queue_offset: u64,
    /// Message id.
    pub message_id: Uuid,
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
}

impl MessageView {
    /// A view of a message with the given coordinates and body; other fields empty.
    pub fn new(
        topic: impl Into<String>,
        queue_id: u32,
        queue_offset: u64,
        message_id: Uuid,
        body: Bytes,
    ) -> Self {
        MessageView {
            topic: topic.into(),
            queue_id,
            queue_offset,
            message_id,
            key: None,
            tag: None,
            properties: BTreeMap::new(),
            body,
            born_timestamp_ms: 0,
            stored_timestamp_ms: 0,
        }
    }
}

impl Wire for MessageView {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.topic);
        buf.put_u32(self.queue_id);
        buf.put_u64(self.queue_offset);
        put_uuid(buf, &self.message_id);
        put_opt_str(buf, self.key.as_deref());
        put_opt_str(buf, self.tag.as_deref());
        put_map(buf, &self.properties);
        put_bytes(buf, &self.body);
        buf.put_u64(self.born_timestamp_ms);
        buf.put_u64(self.stored_timestamp_ms);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(MessageView {
            topic: get_str(buf, "topic")?,
            queue_id: get_u32(buf, "queue id")?,
            queue_offset: get_u64(buf, "queue offset")?,
            message_id: get_uuid(buf, "message id")?,
            key: get_opt_str(buf, "key")?,
            tag: get_opt_str(buf, "tag")?,
            properties: get_map(buf, "properties")?,
            body: get_bytes(buf, "body")?,
            born_timestamp_ms: get_u64(buf, "born timestamp")?,
            stored_timestamp_ms: get_u64(buf, "stored timestamp")?,
        })
    }
}

/// A message handed to a consumer, with the receipt to ack or nack it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The message.
    pub message: MessageView,
    /// Opaque receipt for [`AckRequest`] / [`NackRequest`].
    pub receipt: Bytes,
    /// How many times it was delivered before (0 on the first delivery).
    pub reconsume_times: u32,
}

impl Delivery {
    /// A delivery of `message` with `receipt`.
    pub fn new(message: MessageView, receipt: Bytes, reconsume_times: u32) -> Self {
        Delivery {
            message,
            receipt,
            reconsume_times,
        }
    }
}

impl Wire for Delivery {
    fn put(&self, buf: &mut BytesMut) {
        self.message.put(buf);
        put_bytes(buf, &self.receipt);
        buf.put_u32(self.reconsume_times);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Delivery {
            message: MessageView::get(buf)?,
            receipt: get_bytes(buf, "receipt")?,
            reconsume_times: get_u32(buf, "reconsume times")?,
        })
    }
}

/// Acknowledges a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRequest {
    /// Consumer group.
    pub group: String,
    /// The delivery's receipt.
    pub receipt: Bytes,
}

impl Wire for AckRequest {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.group);
        put_bytes(buf, &self.receipt);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(AckRequest {
            group: get_str(buf, "group")?,
            receipt: get_bytes(buf, "receipt")?,
        })
    }
}

/// Asks for redelivery later (`RECONSUME_LATER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackRequest {
    /// Consumer group.
    pub group: String,
    /// The delivery's receipt.
    pub receipt: Bytes,
    /// Delay level (1 = 1 s ... 18 = 2 h); `None` lets the broker pick by reconsume count.
    pub delay_level: Option<u32>,
}

impl Wire for NackRequest {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.group);
        put_bytes(buf, &self.receipt);
        put_opt_u32(buf, self.delay_level);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(NackRequest {
            group: get_str(buf, "group")?,
            receipt: get_bytes(buf, "receipt")?,
            delay_level: get_opt_u32(buf, "delay level")?,
        })
    }
}

/// A topic and its number of queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Number of queues.
    pub queues: u32,
}

impl Wire for TopicInfo {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.name);
        buf.put_u32(self.queues);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(TopicInfo {
            name: get_str(buf, "topic")?,
            queues: get_u32(buf, "queues")?,
        })
    }
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Clustering or broadcasting.
    pub model: ConsumeModel,
    /// Topics the group subscribed to.
    pub topics: Vec<String>,
    /// Ids of the live members.
    pub members: Vec<String>,
}

impl Wire for GroupInfo {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.name);
        self.model.put(buf);
        put_list(buf, &self.topics, |b, t| put_str(b, t));
        put_list(buf, &self.members, |b, m| put_str(b, m));
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(GroupInfo {
            name: get_str(buf, "group")?,
            model: ConsumeModel::get(buf)?,
            topics: get_list(buf, 4, "topics", |b| get_str(b, "topic"))?,
            members: get_list(buf, 4, "members", |b| get_str(b, "member"))?,
        })
    }
}

/// The lag of a group (or of one broadcasting member) on one queue (safeguard L5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLag {
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: u32,
    /// The member, for broadcasting groups.
    pub consumer_id: Option<String>,
    /// The committed offset: the lowest one not acked.
    pub committed: u64,
    /// One past the newest readable offset.
    pub max: u64,
    /// `max - committed`: messages not yet consumed, in flight included.
    pub lag: u64,
    /// Delivered but not settled yet.
    pub unsettled: u64,
}

impl Wire for QueueLag {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.topic);
        buf.put_u32(self.queue_id);
        put_opt_str(buf, self.consumer_id.as_deref());
        buf.put_u64(self.committed);
        buf.put_u64(self.max);
        buf.put_u64(self.lag);
        buf.put_u64(self.unsettled);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(QueueLag {
            topic: get_str(buf, "topic")?,
            queue_id: get_u32(buf, "queue id")?,
            consumer_id: get_opt_str(buf, "consumer id")?,
            committed: get_u64(buf, "committed offset")?,
            max: get_u64(buf, "max offset")?,
            lag: get_u64(buf, "lag")?,
            unsettled: get_u64(buf, "unsettled")?,
        })
    }
}

/// What a nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackResult {
    /// The message will be delivered again after this many milliseconds.
    Redeliver {
        /// Delay in milliseconds.
        after_ms: u64,
    },
    /// It had been redelivered the maximum number of times and went to the dead-letter topic.
    DeadLettered,
}

impl Wire for NackResult {
    fn put(&self, buf: &mut BytesMut) {
        match self {
            NackResult::Redeliver { after_ms } => {
                buf.put_u8(0);
                buf.put_u64(*after_ms);
            }
            NackResult::DeadLettered => buf.put_u8(1),
        }
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match get_u8(buf, "nack result")? {
            0 => Ok(NackResult::Redeliver {
                after_ms: get_u64(buf, "redelivery delay")?,
            }),
            1 => Ok(NackResult::DeadLettered),
            _ => Err(DecodeError::Invalid("nack result")),
        }
    }
}

/// One event in a message's life (safeguard L4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// When, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// What happened: `stored`, `delivered`, `acked`, `nacked`, `dead-lettered` ...
    pub event: String,
    /// Details: group, consumer, queue, attempt.
    pub detail: String,
}

impl Wire for TraceEvent {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u64(self.timestamp_ms);
        put_str(buf, &self.event);
        put_str(buf, &self.detail);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(TraceEvent {
            timestamp_ms: get_u64(buf, "timestamp")?,
            event: get_str(buf, "event")?,
            detail: get_str(buf, "detail")?,
        })
    }
}
