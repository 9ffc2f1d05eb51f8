//! Admin views: topics, groups, lag, traces.

use bytes::{BufMut, Bytes, BytesMut};

use super::Wire;
use super::consumer::ConsumeModel;
use crate::protocol::error::DecodeError;
use crate::protocol::wire::*;

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
