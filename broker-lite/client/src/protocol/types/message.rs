//! Messages: what producers send, what the broker answers, what readers see.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::Wire;
use crate::protocol::error::DecodeError;
use crate::protocol::wire::*;

/// A message to send.
///
/// ```
/// use broker_lite_client::protocol::Message;
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

/// The status of a send (safeguard P1). Only [`SendStatus::SendOk`] means "stored as configured":
/// anything else means the message was written but is not known to be as durable as configured,
/// and a producer should treat it as a failure (and retry, accepting a possible duplicate) unless
/// configured otherwise.
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
    /// Whether this is [`SendStatus::SendOk`].
    pub fn is_ok(self) -> bool {
        self == SendStatus::SendOk
    }

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
    /// Whether the broker already held a message with this id on this topic (a producer or relay
    /// retry inside its deduplication window) and stored nothing new: the queue, offset and status
    /// are then the first copy's.
    pub duplicate: bool,
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
        buf.put_u8(u8::from(self.duplicate));
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(SendResult {
            status: SendStatus::get(buf)?,
            message_id: get_uuid(buf, "message id")?,
            queue_id: get_u32(buf, "queue id")?,
            queue_offset: get_u64(buf, "queue offset")?,
            duplicate: match get_u8(buf, "duplicate flag")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Invalid("duplicate flag")),
            },
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

impl MessageView {
    /// The size of its encoding in an answer: what a byte budget counts it as.
    ///
    /// ```
    /// use broker_lite_client::protocol::MessageView;
    /// let m = MessageView::new("orders", 0, 7, uuid::Uuid::nil(), "body".into());
    /// assert_eq!(m.wire_len(), 4 + 6 + 4 + 8 + 16 + 1 + 1 + 4 + 4 + 4 + 8 + 8);
    /// ```
    pub fn wire_len(&self) -> usize {
        let opt = |s: &Option<String>| 1 + s.as_ref().map_or(0, |s| 4 + s.len());
        let properties: usize = self
            .properties
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum();
        4 + self.topic.len()
            + 4
            + 8
            + 16
            + opt(&self.key)
            + opt(&self.tag)
            + 4
            + properties
            + 4
            + self.body.len()
            + 8
            + 8
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
