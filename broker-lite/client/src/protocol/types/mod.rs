//! The data carried by commands, with their binary encodings.

use bytes::{Bytes, BytesMut};

use super::error::DecodeError;

mod admin;
mod auth;
mod consumer;
mod describe;
mod message;
mod page;
mod promote;
mod replica;

pub use admin::{GroupInfo, QueueLag, TopicInfo, TraceEvent};
pub use auth::{AuthChallenge, AuthDone, AuthFinish, AuthStart};
pub use consumer::{
    AckRequest, ConsumeModel, DeadLetterRequest, Delivery, Member, NackRequest, NackResult,
    PullRequest, Subscription,
};
pub use describe::{BrokerDescription, FlushMode, FollowerView, Replication, ReplicationStatus};
pub use message::{Message, MessageView, SendResult, SendStatus};
pub use page::MessagePage;
pub use promote::{PromoteRequest, Promotion};
pub use replica::{EpochStart, ReplicaAck, ReplicaBatch, ReplicaFetch, ReplicaRecord};

/// A type with a compact binary encoding.
pub(crate) trait Wire: Sized {
    /// Appends the encoding.
    fn put(&self, buf: &mut BytesMut);
    /// Reads one value.
    fn get(buf: &mut Bytes) -> Result<Self, DecodeError>;
}
