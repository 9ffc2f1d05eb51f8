//! The broker error type.

use crate::storage::StorageError;

/// A `Result` whose error defaults to [`BrokerError`].
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// Everything a broker operation can fail with.
///
/// Messages are lower case and say what went wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The topic does not exist and topics are not created automatically.
    #[error(
        "unknown topic {0:?}; create it first with `create_topic` or enable `auto_create_topics`"
    )]
    UnknownTopic(String),
    /// The topic exists with a different number of queues.
    #[error("topic {topic:?} already exists with {queues} queues")]
    TopicExists {
        /// The topic.
        topic: String,
        /// Its current queue count.
        queues: u32,
    },
    /// A topic or group name is not acceptable.
    #[error("invalid name {0:?}: {1}")]
    InvalidName(String, &'static str),
    /// The queue id is not a queue of the topic.
    #[error("topic {topic:?} has {queues} queues; queue {queue_id} does not exist")]
    UnknownQueue {
        /// The topic.
        topic: String,
        /// The requested queue.
        queue_id: u32,
        /// The topic's queue count.
        queues: u32,
    },
    /// The consumer group is not known to the broker.
    #[error("unknown consumer group {0:?}; subscribe a member first")]
    UnknownGroup(String),
    /// The member is not (or no longer) part of its group, or not subscribed to the topic.
    #[error(
        "client {client_id:?} is not a live member of group {group:?} for topic {topic:?}; \
         subscribe again (it may have been evicted after missing heartbeats)"
    )]
    UnknownMember {
        /// The group.
        group: String,
        /// The client.
        client_id: String,
        /// The topic asked for (empty when not relevant).
        topic: String,
    },
    /// The group exists with the other message model.
    #[error("group {group:?} already uses the {existing:?} model; use another group name")]
    ModelMismatch {
        /// The group.
        group: String,
        /// The model it uses.
        existing: super::MessageModel,
    },
    /// Another member of the clustering group consumes the topic with a different tag filter.
    /// Members of one clustering group share one committed offset per queue, and the owner of a
    /// queue settles the messages its filter skips for the whole group, so two filters in one
    /// group would lose the messages only the other filter wants.
    #[error(
        "consumer group {group:?} already consumes topic {topic:?} with tag filter {} (member {member:?}), \
         but this subscription asks for {}; all members of a clustering group must use the same \
         filter, or messages one member skips are lost for the others; use a new consumer group \
         for the new filter, or stop every member with the old filter first (a member leaves when \
         its connection closes) and subscribe again",
        super::group::describe_filter(.existing.as_deref()),
        super::group::describe_filter(.requested.as_deref())
    )]
    SubscriptionMismatch {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// A member subscribed with the existing filter.
        member: String,
        /// The existing filter (`None`: every tag).
        existing: Option<Vec<String>>,
        /// The filter asked for (`None`: every tag).
        requested: Option<Vec<String>>,
    },
    /// The receipt no longer matches a delivery: the message was redelivered meanwhile (after
    /// a consume timeout or a rebalance) or already settled.
    #[error(
        "stale receipt for {topic}:{queue_id}@{queue_offset} (delivery attempt {attempt}): the message \
         was redelivered or settled meanwhile; settle the newer delivery instead"
    )]
    StaleReceipt {
        /// Topic of the receipt.
        topic: String,
        /// Queue of the receipt.
        queue_id: u32,
        /// Offset of the receipt.
        queue_offset: u64,
        /// Delivery attempt of the receipt.
        attempt: u32,
    },
    /// A receipt could not be decoded.
    #[error("malformed receipt; pass the receipt exactly as it was delivered")]
    MalformedReceipt,
    /// The receipt was not issued by this broker process to this principal and group: forged,
    /// altered, issued before a restart, or someone else's. Nothing was settled.
    #[error("receipt refused: {0}; nothing was settled")]
    ForeignReceipt(String),
    /// A message body is larger than `max_message_size`.
    #[error(
        "message of {size} bytes exceeds the limit of {limit} bytes (`max_message_size`); send a smaller message"
    )]
    MessageTooLarge {
        /// Body size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// A request field is not valid.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The configuration is not usable.
    #[error("invalid broker configuration: {0}")]
    InvalidConfig(String),
    /// A consumer-offset or topic checkpoint could not be decoded.
    #[error("broker checkpoint {name} is unreadable: {reason}; inspect the data directory")]
    CorruptState {
        /// Checkpoint name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The broker was closed.
    #[error("the broker is closed; open it again to continue")]
    Closed,
    /// Replication refused the request: this node is not (or no longer) the leader, the epoch is
    /// stale, or a follower diverged. The message says which and what to do.
    #[error("replication: {0}")]
    Replication(String),
    /// The storage layer failed; nothing was acknowledged.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
}

impl BrokerError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            BrokerError::Storage(e) => e.is_retryable(),
            BrokerError::UnknownMember { .. } => true,
            _ => false,
        }
    }
}
