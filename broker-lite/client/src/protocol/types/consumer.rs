//! Consumer commands: subscriptions, pulls, deliveries and settlements.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::Wire;
use crate::protocol::error::DecodeError;
use crate::protocol::wire::*;

use super::message::MessageView;

/// How a consumer group's members share a topic (safeguard C5).
///
/// One type for the wire and the broker, which also persists it with a group's offsets (hence
/// serde).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum ConsumeModel {
    /// CLUSTERING: each message goes to one member; the topic's queues are balanced across the
    /// live members.
    #[default]
    Clustering,
    /// BROADCASTING: every member gets every message, with offsets kept per member. Handlers
    /// with side effects must be idempotent: each member applies them.
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

/// A message handed to a consumer, with the receipt to ack or nack it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The message.
    pub message: MessageView,
    /// Opaque receipt for [`AckRequest`] / [`NackRequest`].
    pub receipt: Bytes,
    /// How many times it was redelivered after a nack or consume timeout (0 on the first
    /// delivery).
    pub reconsume_times: u32,
    /// When the group first had it delivered, ms since the Unix epoch (broker clock); 0 when
    /// unknown.
    pub first_delivered_at_ms: u64,
}

impl Delivery {
    /// A delivery of `message` with `receipt`; the first delivery time is unknown (0).
    pub fn new(message: MessageView, receipt: Bytes, reconsume_times: u32) -> Self {
        Delivery {
            message,
            receipt,
            reconsume_times,
            first_delivered_at_ms: 0,
        }
    }

    /// Sets when the group first had the message delivered, ms since the Unix epoch.
    pub fn with_first_delivered_at_ms(mut self, at_ms: u64) -> Self {
        self.first_delivered_at_ms = at_ms;
        self
    }
}

impl Wire for Delivery {
    fn put(&self, buf: &mut BytesMut) {
        self.message.put(buf);
        put_bytes(buf, &self.receipt);
        buf.put_u32(self.reconsume_times);
        buf.put_u64(self.first_delivered_at_ms);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Delivery {
            message: MessageView::get(buf)?,
            receipt: get_bytes(buf, "receipt")?,
            reconsume_times: get_u32(buf, "reconsume times")?,
            first_delivered_at_ms: get_u64(buf, "first delivery time")?,
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

/// Dead-letters a delivery at once: the consumer's permanent failure (safeguard C8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRequest {
    /// Consumer group.
    pub group: String,
    /// The delivery's receipt.
    pub receipt: Bytes,
    /// Why, kept with the dead letter.
    pub reason: Option<String>,
}

impl Wire for DeadLetterRequest {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.group);
        put_bytes(buf, &self.receipt);
        put_opt_str(buf, self.reason.as_deref());
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(DeadLetterRequest {
            group: get_str(buf, "group")?,
            receipt: get_bytes(buf, "receipt")?,
            reason: get_opt_str(buf, "reason")?,
        })
    }
}

/// What a nack did (RECONSUME_LATER, safeguards C1, C8). The delay travels in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum NackResult {
    /// The message will be delivered again after this delay.
    Redeliver {
        /// The delay of the chosen level.
        after: Duration,
    },
    /// It had been redelivered the maximum number of times and went to the dead-letter topic
    /// `%DLQ%<group>`.
    DeadLettered,
}

impl Wire for NackResult {
    fn put(&self, buf: &mut BytesMut) {
        match self {
            NackResult::Redeliver { after } => {
                buf.put_u8(0);
                buf.put_u64(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
            }
            NackResult::DeadLettered => buf.put_u8(1),
        }
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match get_u8(buf, "nack result")? {
            0 => Ok(NackResult::Redeliver {
                after: Duration::from_millis(get_u64(buf, "redelivery delay")?),
            }),
            1 => Ok(NackResult::DeadLettered),
            _ => Err(DecodeError::Invalid("nack result")),
        }
    }
}
