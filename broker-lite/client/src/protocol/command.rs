//! Commands: codes, requests and responses, and their body encodings.

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::error::{DecodeError, ErrorCode, ErrorReply};
use super::frame::ensure_empty;
use super::types::*;
use super::wire::*;

mod response;

pub use response::Response;

/// The command code in a frame header. Stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum CommandCode {
    /// Liveness check.
    Ping = 1,
    /// Send one message and wait for its [`SendResult`].
    Send = 2,
    /// Send a batch, one result per message.
    SendBatch = 3,
    /// Send without an answer (loss-tolerant data only, P3).
    SendOneway = 4,
    /// Join a consumer group.
    Subscribe = 5,
    /// Keep a membership alive.
    Heartbeat = 6,
    /// Leave a group.
    Unsubscribe = 7,
    /// Pull deliveries, with long polling.
    Pull = 8,
    /// Acknowledge a delivery.
    Ack = 9,
    /// Ask for a redelivery later.
    Nack = 10,
    /// Create a topic.
    CreateTopic = 11,
    /// List topics.
    ListTopics = 12,
    /// List consumer groups.
    ListGroups = 13,
    /// Lag of a group per queue.
    Lag = 14,
    /// Find a message by id.
    LookupById = 15,
    /// Find messages by key.
    LookupByKey = 16,
    /// The life of one message.
    Trace = 17,
    /// List a group's dead letters.
    DeadLetters = 18,
    /// Send a group's dead letters back for consumption.
    RedriveDeadLetters = 19,
    /// Dead-letter one delivery at once (a permanent consumer failure).
    DeadLetter = 20,
    /// The broker's version and durability settings (L2).
    Describe = 21,
    /// Authentication, first step (SCRAM-SHA-256): user and client nonce.
    AuthStart = 22,
    /// Authentication, second step: the client's proof.
    AuthFinish = 23,
    /// A follower's pull of the leader's log, with its durable position (replication, admin).
    ReplicaFetch = 24,
    /// One page of a group's dead letters, bounded by bytes, with a cursor (admin).
    DeadLettersPage = 25,
    /// One page of the messages with a key, bounded by bytes, with a cursor (admin).
    LookupByKeyPage = 26,
    /// Make a follower the leader, or report whether it could be (replication, admin).
    Promote = 27,
    /// A follower's report of its durable position after an fsync (replication, admin).
    ReplicaAck = 28,
}

impl CommandCode {
    /// Every command.
    pub const ALL: [CommandCode; 28] = [
        CommandCode::Ping,
        CommandCode::Send,
        CommandCode::SendBatch,
        CommandCode::SendOneway,
        CommandCode::Subscribe,
        CommandCode::Heartbeat,
        CommandCode::Unsubscribe,
        CommandCode::Pull,
        CommandCode::Ack,
        CommandCode::Nack,
        CommandCode::CreateTopic,
        CommandCode::ListTopics,
        CommandCode::ListGroups,
        CommandCode::Lag,
        CommandCode::LookupById,
        CommandCode::LookupByKey,
        CommandCode::Trace,
        CommandCode::DeadLetters,
        CommandCode::RedriveDeadLetters,
        CommandCode::DeadLetter,
        CommandCode::Describe,
        CommandCode::AuthStart,
        CommandCode::AuthFinish,
        CommandCode::ReplicaFetch,
        CommandCode::DeadLettersPage,
        CommandCode::LookupByKeyPage,
        CommandCode::Promote,
        CommandCode::ReplicaAck,
    ];

    /// From the wire value.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownCommand`] for an unknown code.
    pub fn from_u16(code: u16) -> Result<Self, DecodeError> {
        CommandCode::ALL
            .iter()
            .copied()
            .find(|c| *c as u16 == code)
            .ok_or(DecodeError::UnknownCommand(code))
    }

    /// A short lower-case name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CommandCode::Ping => "ping",
            CommandCode::Send => "send",
            CommandCode::SendBatch => "send_batch",
            CommandCode::SendOneway => "send_oneway",
            CommandCode::Subscribe => "subscribe",
            CommandCode::Heartbeat => "heartbeat",
            CommandCode::Unsubscribe => "unsubscribe",
            CommandCode::Pull => "pull",
            CommandCode::Ack => "ack",
            CommandCode::Nack => "nack",
            CommandCode::CreateTopic => "create_topic",
            CommandCode::ListTopics => "list_topics",
            CommandCode::ListGroups => "list_groups",
            CommandCode::Lag => "lag",
            CommandCode::LookupById => "lookup_by_id",
            CommandCode::LookupByKey => "lookup_by_key",
            CommandCode::Trace => "trace",
            CommandCode::DeadLetters => "dead_letters",
            CommandCode::RedriveDeadLetters => "redrive_dead_letters",
            CommandCode::DeadLetter => "dead_letter",
            CommandCode::Describe => "describe",
            CommandCode::AuthStart => "auth_start",
            CommandCode::AuthFinish => "auth_finish",
            CommandCode::ReplicaFetch => "replica_fetch",
            CommandCode::DeadLettersPage => "dead_letters_page",
            CommandCode::LookupByKeyPage => "lookup_by_key_page",
            CommandCode::Promote => "promote",
            CommandCode::ReplicaAck => "replica_ack",
        }
    }
}

/// Size limits enforced by both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame after the length prefix. Default 8 MiB.
    pub max_frame_size: u32,
    /// Largest message body. Default 4 MiB.
    pub max_body_size: u32,
    /// Most messages in one batch send or one pull. Default 1024.
    pub max_batch: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: super::frame::DEFAULT_MAX_FRAME_SIZE,
            max_body_size: 4 * 1024 * 1024,
            max_batch: 1024,
        }
    }
}

/// A request, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
// Exhaustive on purpose: the server (another crate) matches every request, so a new command
// does not compile until the server answers it.
pub enum Request {
    /// [`CommandCode::Ping`].
    Ping,
    /// [`CommandCode::Send`].
    Send(Message),
    /// [`CommandCode::SendBatch`].
    SendBatch(Vec<Message>),
    /// [`CommandCode::SendOneway`].
    SendOneway(Message),
    /// [`CommandCode::Subscribe`].
    Subscribe(Subscription),
    /// [`CommandCode::Heartbeat`].
    Heartbeat(Member),
    /// [`CommandCode::Unsubscribe`].
    Unsubscribe(Member),
    /// [`CommandCode::Pull`].
    Pull(PullRequest),
    /// [`CommandCode::Ack`].
    Ack(AckRequest),
    /// [`CommandCode::Nack`].
    Nack(NackRequest),
    /// [`CommandCode::DeadLetter`].
    DeadLetter(DeadLetterRequest),
    /// [`CommandCode::CreateTopic`].
    CreateTopic(TopicInfo),
    /// [`CommandCode::ListTopics`].
    ListTopics,
    /// [`CommandCode::ListGroups`].
    ListGroups,
    /// [`CommandCode::Lag`] of a group.
    Lag {
        /// Consumer group.
        group: String,
    },
    /// [`CommandCode::LookupById`].
    LookupById(Uuid),
    /// [`CommandCode::LookupByKey`].
    LookupByKey {
        /// Topic.
        topic: String,
        /// Key.
        key: String,
        /// At most this many.
        max: u32,
    },
    /// [`CommandCode::Trace`] of a message id.
    Trace(Uuid),
    /// [`CommandCode::DeadLetters`] of a group.
    DeadLetters {
        /// Consumer group.
        group: String,
        /// At most this many.
        max: u32,
    },
    /// [`CommandCode::RedriveDeadLetters`] of a group.
    RedriveDeadLetters {
        /// Consumer group.
        group: String,
        /// Only these message ids (empty: all).
        ids: Vec<Uuid>,
    },
    /// [`CommandCode::Describe`].
    Describe,
    /// [`CommandCode::AuthStart`].
    AuthStart(AuthStart),
    /// [`CommandCode::AuthFinish`].
    AuthFinish(AuthFinish),
    /// [`CommandCode::ReplicaFetch`].
    ReplicaFetch(ReplicaFetch),
    /// [`CommandCode::DeadLettersPage`]: answered with [`Response::Page`].
    DeadLettersPage {
        /// Consumer group.
        group: String,
        /// At most this many.
        max: u32,
        /// The previous page's [`MessagePage::next`]; `None` for the first page.
        cursor: Option<u64>,
    },
    /// [`CommandCode::LookupByKeyPage`], newest first: answered with [`Response::Page`].
    LookupByKeyPage {
        /// Topic.
        topic: String,
        /// Key.
        key: String,
        /// At most this many.
        max: u32,
        /// The previous page's [`MessagePage::next`]; `None` for the first page.
        cursor: Option<u64>,
    },
    /// [`CommandCode::Promote`].
    Promote(PromoteRequest),
    /// [`CommandCode::ReplicaAck`]: answered with [`Response::Done`].
    ReplicaAck(ReplicaAck),
}

impl Request {
    /// The command code.
    pub fn code(&self) -> CommandCode {
        match self {
            Request::Ping => CommandCode::Ping,
            Request::Send(_) => CommandCode::Send,
            Request::SendBatch(_) => CommandCode::SendBatch,
            Request::SendOneway(_) => CommandCode::SendOneway,
            Request::Subscribe(_) => CommandCode::Subscribe,
            Request::Heartbeat(_) => CommandCode::Heartbeat,
            Request::Unsubscribe(_) => CommandCode::Unsubscribe,
            Request::Pull(_) => CommandCode::Pull,
            Request::Ack(_) => CommandCode::Ack,
            Request::Nack(_) => CommandCode::Nack,
            Request::DeadLetter(_) => CommandCode::DeadLetter,
            Request::CreateTopic(_) => CommandCode::CreateTopic,
            Request::ListTopics => CommandCode::ListTopics,
            Request::ListGroups => CommandCode::ListGroups,
            Request::Lag { .. } => CommandCode::Lag,
            Request::LookupById(_) => CommandCode::LookupById,
            Request::LookupByKey { .. } => CommandCode::LookupByKey,
            Request::Trace(_) => CommandCode::Trace,
            Request::DeadLetters { .. } => CommandCode::DeadLetters,
            Request::RedriveDeadLetters { .. } => CommandCode::RedriveDeadLetters,
            Request::Describe => CommandCode::Describe,
            Request::AuthStart(_) => CommandCode::AuthStart,
            Request::AuthFinish(_) => CommandCode::AuthFinish,
            Request::ReplicaFetch(_) => CommandCode::ReplicaFetch,
            Request::DeadLettersPage { .. } => CommandCode::DeadLettersPage,
            Request::LookupByKeyPage { .. } => CommandCode::LookupByKeyPage,
            Request::Promote(_) => CommandCode::Promote,
            Request::ReplicaAck(_) => CommandCode::ReplicaAck,
        }
    }

    /// Encodes the body.
    pub fn encode_body(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            Request::Ping | Request::ListTopics | Request::ListGroups | Request::Describe => {}
            Request::Send(m) | Request::SendOneway(m) => m.put(&mut buf),
            Request::SendBatch(ms) => put_list(&mut buf, ms, |b, m| m.put(b)),
            Request::Subscribe(s) => s.put(&mut buf),
            Request::Heartbeat(m) | Request::Unsubscribe(m) => m.put(&mut buf),
            Request::Pull(p) => p.put(&mut buf),
            Request::Ack(a) => a.put(&mut buf),
            Request::Nack(n) => n.put(&mut buf),
            Request::DeadLetter(d) => d.put(&mut buf),
            Request::AuthStart(a) => a.put(&mut buf),
            Request::AuthFinish(a) => a.put(&mut buf),
            Request::ReplicaFetch(f) => f.put(&mut buf),
            Request::ReplicaAck(a) => a.put(&mut buf),
            Request::Promote(p) => p.put(&mut buf),
            Request::CreateTopic(t) => t.put(&mut buf),
            Request::Lag { group } => put_str(&mut buf, group),
            Request::RedriveDeadLetters { group, ids } => {
                put_str(&mut buf, group);
                put_list(&mut buf, ids, put_uuid);
            }
            Request::LookupById(id) | Request::Trace(id) => put_uuid(&mut buf, id),
            Request::LookupByKey { topic, key, max } => {
                put_str(&mut buf, topic);
                put_str(&mut buf, key);
                buf.put_u32(*max);
            }
            Request::DeadLetters { group, max } => {
                put_str(&mut buf, group);
                buf.put_u32(*max);
            }
            Request::DeadLettersPage { group, max, cursor } => {
                put_str(&mut buf, group);
                buf.put_u32(*max);
                put_opt_u64(&mut buf, *cursor);
            }
            Request::LookupByKeyPage {
                topic,
                key,
                max,
                cursor,
            } => {
                put_str(&mut buf, topic);
                put_str(&mut buf, key);
                buf.put_u32(*max);
                put_opt_u64(&mut buf, *cursor);
            }
        }
        buf.freeze()
    }

    /// Decodes a body for the command `code`.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for an unknown code, truncated or invalid input, or trailing bytes.
    pub fn decode(code: u16, mut body: Bytes) -> Result<Self, DecodeError> {
        let b = &mut body;
        let request = match CommandCode::from_u16(code)? {
            CommandCode::Ping => Request::Ping,
            CommandCode::Send => Request::Send(Message::get(b)?),
            CommandCode::SendBatch => Request::SendBatch(get_list(b, 16, "batch", Message::get)?),
            CommandCode::SendOneway => Request::SendOneway(Message::get(b)?),
            CommandCode::Subscribe => Request::Subscribe(Subscription::get(b)?),
            CommandCode::Heartbeat => Request::Heartbeat(Member::get(b)?),
            CommandCode::Unsubscribe => Request::Unsubscribe(Member::get(b)?),
            CommandCode::Pull => Request::Pull(PullRequest::get(b)?),
            CommandCode::Ack => Request::Ack(AckRequest::get(b)?),
            CommandCode::Nack => Request::Nack(NackRequest::get(b)?),
            CommandCode::DeadLetter => Request::DeadLetter(DeadLetterRequest::get(b)?),
            CommandCode::CreateTopic => Request::CreateTopic(TopicInfo::get(b)?),
            CommandCode::ListTopics => Request::ListTopics,
            CommandCode::ListGroups => Request::ListGroups,
            CommandCode::Describe => Request::Describe,
            CommandCode::AuthStart => Request::AuthStart(AuthStart::get(b)?),
            CommandCode::AuthFinish => Request::AuthFinish(AuthFinish::get(b)?),
            CommandCode::ReplicaFetch => Request::ReplicaFetch(ReplicaFetch::get(b)?),
            CommandCode::ReplicaAck => Request::ReplicaAck(ReplicaAck::get(b)?),
            CommandCode::Promote => Request::Promote(PromoteRequest::get(b)?),
            CommandCode::Lag => Request::Lag {
                group: get_str(b, "group")?,
            },
            CommandCode::LookupById => Request::LookupById(get_uuid(b, "message id")?),
            CommandCode::LookupByKey => Request::LookupByKey {
                topic: get_str(b, "topic")?,
                key: get_str(b, "key")?,
                max: get_u32(b, "max")?,
            },
            CommandCode::Trace => Request::Trace(get_uuid(b, "message id")?),
            CommandCode::DeadLetters => Request::DeadLetters {
                group: get_str(b, "group")?,
                max: get_u32(b, "max")?,
            },
            CommandCode::RedriveDeadLetters => Request::RedriveDeadLetters {
                group: get_str(b, "group")?,
                ids: get_list(b, 16, "message ids", |b| get_uuid(b, "message id"))?,
            },
            CommandCode::DeadLettersPage => Request::DeadLettersPage {
                group: get_str(b, "group")?,
                max: get_u32(b, "max")?,
                cursor: get_opt_u64(b, "cursor")?,
            },
            CommandCode::LookupByKeyPage => Request::LookupByKeyPage {
                topic: get_str(b, "topic")?,
                key: get_str(b, "key")?,
                max: get_u32(b, "max")?,
                cursor: get_opt_u64(b, "cursor")?,
            },
        };
        ensure_empty(&body)?;
        Ok(request)
    }

    /// Checks the request against `limits` and basic sanity (non-empty topic and group names).
    ///
    /// # Errors
    ///
    /// An [`ErrorReply`] with [`ErrorCode::InvalidRequest`] saying what is wrong.
    pub fn validate(&self, limits: &Limits) -> Result<(), ErrorReply> {
        let invalid = |m: String| Err(ErrorReply::new(ErrorCode::InvalidRequest, m));
        let check_message = |m: &Message| {
            if m.topic.is_empty() {
                return invalid("the topic must not be empty".into());
            }
            if m.body.len() > limits.max_body_size as usize {
                return invalid(format!(
                    "message body of {} bytes exceeds the limit of {} bytes",
                    m.body.len(),
                    limits.max_body_size
                ));
            }
            Ok(())
        };
        let check_group = |g: &str| {
            if g.is_empty() {
                invalid("the group must not be empty".into())
            } else {
                Ok(())
            }
        };
        match self {
            Request::Send(m) | Request::SendOneway(m) => check_message(m),
            Request::SendBatch(ms) => {
                if ms.is_empty() {
                    return invalid("a batch must hold at least one message".into());
                }
                if ms.len() > limits.max_batch as usize {
                    return invalid(format!(
                        "batch of {} messages exceeds the limit of {}",
                        ms.len(),
                        limits.max_batch
                    ));
                }
                ms.iter().try_for_each(check_message)
            }
            Request::Subscribe(s) => {
                check_group(&s.group)?;
                if s.topic.is_empty() {
                    return invalid("the topic must not be empty".into());
                }
                Ok(())
            }
            Request::Pull(p) => {
                check_group(&p.group)?;
                if p.topic.is_empty() {
                    return invalid("the topic must not be empty".into());
                }
                if p.max_messages == 0 || p.max_messages > limits.max_batch {
                    return invalid(format!("max messages must be 1 to {}", limits.max_batch));
                }
                Ok(())
            }
            Request::CreateTopic(t) => {
                if t.name.is_empty() || t.queues == 0 {
                    return invalid("a topic needs a name and at least one queue".into());
                }
                Ok(())
            }
            Request::Heartbeat(m) | Request::Unsubscribe(m) => check_group(&m.group),
            Request::Ack(a) => check_group(&a.group),
            Request::DeadLetter(d) => check_group(&d.group),
            Request::Nack(n) => {
                check_group(&n.group)?;
                if n.delay_level
                    .is_some_and(|l| l == 0 || l > u32::from(u8::MAX))
                {
                    return invalid("the delay level must be 1 to 255".into());
                }
                Ok(())
            }
            Request::Lag { group }
            | Request::RedriveDeadLetters { group, .. }
            | Request::DeadLetters { group, .. }
            | Request::DeadLettersPage { group, .. } => check_group(group),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
