//! Replication between broker-lite nodes (issue 13): what a follower asks its leader for and what
//! the leader answers.
//!
//! A follower pulls: it sends [`ReplicaFetch`] with the log position it has *written* (where the
//! leader sends from) and the one it holds *durably* (fsynced: its report of how far it got), and
//! the leader answers with the records from there ([`ReplicaBatch`]). Between fetches it reports
//! each fsync with a [`ReplicaAck`], so that it can fetch the next records while the previous
//! ones are being fsynced and the leader still hears at once when they are durable. Positions are byte positions in the commit log; a follower configured with
//! the leader's segment size places every record at the leader's position, so "follower holds
//! everything below `from_position`" is a statement about the leader's log too. Both carry the
//! leadership epoch, so that a node hearing of a newer epoch stops acting on an older one.
//!
//! The command needs the admin permission: a stranger can neither read the log through it nor
//! report a fake offset (RocketMQ #3015).

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::Wire;
use crate::protocol::error::DecodeError;
use crate::protocol::wire::*;

/// A follower's pull (and offset report).
///
/// ```
/// use broker_lite_client::protocol::{Request, ReplicaFetch};
///
/// let fetch = ReplicaFetch { follower: "b2".into(), epoch: 3, from_position: 4096,
///     durable_position: 2048, max_bytes: 1 << 20, max_wait_ms: 200, want_checkpoints: true };
/// let request = Request::ReplicaFetch(fetch.clone());
/// let decoded = Request::decode(request.code() as u16, request.encode_body()).unwrap();
/// assert_eq!(decoded, Request::ReplicaFetch(fetch));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetch {
    /// The follower's name (unique per follower; the leader tracks each one's progress by it).
    pub follower: String,
    /// The newest leadership epoch the follower knows.
    pub epoch: u64,
    /// The follower has written every record below this position; send from here.
    pub from_position: u64,
    /// The follower holds every record below this position durably (at most `from_position`).
    pub durable_position: u64,
    /// About how many record bytes to answer with (at least one record when any is readable).
    pub max_bytes: u32,
    /// How long the leader may wait for new records when there are none yet, in milliseconds.
    pub max_wait_ms: u32,
    /// Whether to include the broker state kept outside the log (topics, consumer offsets).
    pub want_checkpoints: bool,
}

impl Wire for ReplicaFetch {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.follower);
        buf.put_u64(self.epoch);
        buf.put_u64(self.from_position);
        buf.put_u64(self.durable_position);
        buf.put_u32(self.max_bytes);
        buf.put_u32(self.max_wait_ms);
        buf.put_u8(u8::from(self.want_checkpoints));
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ReplicaFetch {
            follower: get_str(buf, "follower")?,
            epoch: get_u64(buf, "epoch")?,
            from_position: get_u64(buf, "from position")?,
            durable_position: get_u64(buf, "durable position")?,
            max_bytes: get_u32(buf, "max bytes")?,
            max_wait_ms: get_u32(buf, "max wait")?,
            want_checkpoints: get_bool(buf, "want checkpoints")?,
        })
    }
}

/// A follower's report that it holds every record below `durable_position` durably, sent after
/// each fsync (answered with [`Response::Done`](crate::protocol::Response::Done)).
///
/// ```
/// use broker_lite_client::protocol::{Request, ReplicaAck};
///
/// let ack = ReplicaAck { follower: "b2".into(), epoch: 3, durable_position: 4096 };
/// let request = Request::ReplicaAck(ack.clone());
/// let decoded = Request::decode(request.code() as u16, request.encode_body()).unwrap();
/// assert_eq!(decoded, Request::ReplicaAck(ack));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaAck {
    /// The follower's name, as in its fetches.
    pub follower: String,
    /// The newest leadership epoch the follower knows.
    pub epoch: u64,
    /// The follower holds every record below this position durably.
    pub durable_position: u64,
}

impl Wire for ReplicaAck {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.follower);
        buf.put_u64(self.epoch);
        buf.put_u64(self.durable_position);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ReplicaAck {
            follower: get_str(buf, "follower")?,
            epoch: get_u64(buf, "epoch")?,
            durable_position: get_u64(buf, "durable position")?,
        })
    }
}

/// One record of the leader's log, with everything needed to store it byte-identically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// Where the record's frame starts in the leader's log.
    pub log_position: u64,
    /// Topic.
    pub topic: String,
    /// Queue within the topic.
    pub queue_id: u32,
    /// Message id.
    pub message_id: Uuid,
    /// Key.
    pub key: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Properties, the broker's `%` ones included.
    pub properties: std::collections::BTreeMap<String, String>,
    /// Payload.
    pub body: Bytes,
    /// When the producer created it, ms since the Unix epoch.
    pub born_timestamp_ms: u64,
    /// Flags.
    pub flags: u16,
}

impl Wire for ReplicaRecord {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u64(self.log_position);
        put_str(buf, &self.topic);
        buf.put_u32(self.queue_id);
        put_uuid(buf, &self.message_id);
        put_opt_str(buf, self.key.as_deref());
        put_opt_str(buf, self.tag.as_deref());
        put_map(buf, &self.properties);
        put_bytes(buf, &self.body);
        buf.put_u64(self.born_timestamp_ms);
        buf.put_u16(self.flags);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ReplicaRecord {
            log_position: get_u64(buf, "log position")?,
            topic: get_str(buf, "topic")?,
            queue_id: get_u32(buf, "queue id")?,
            message_id: get_uuid(buf, "message id")?,
            key: get_opt_str(buf, "key")?,
            tag: get_opt_str(buf, "tag")?,
            properties: get_map(buf, "properties")?,
            body: get_bytes(buf, "body")?,
            born_timestamp_ms: get_u64(buf, "born timestamp")?,
            flags: get_u16(buf, "flags")?,
        })
    }
}

/// One leadership: its epoch and the log position its first record went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: u64,
    /// The log position where it started.
    pub start_position: u64,
}

/// The leader's answer to a [`ReplicaFetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaBatch {
    /// The leader's epoch history, oldest first; the last entry is its current epoch.
    pub epochs: Vec<EpochStart>,
    /// The leader's segment size: the follower must use the same one to keep positions equal.
    pub segment_size: u64,
    /// Records from the fetch position on, in log order.
    pub records: Vec<ReplicaRecord>,
    /// Where the next fetch continues (past the last record, or past a segment's end).
    pub next_position: u64,
    /// The leader's commit position: what is replicated as `SYNC_MASTER` requires.
    pub commit_position: u64,
    /// Named broker checkpoints (topics, consumer offsets), when asked for.
    pub checkpoints: Vec<(String, Bytes)>,
    /// The leader's written log end when it answered (records it may not have fsynced yet: the
    /// leader ships them so that its fsync and the follower's overlap); a follower at or past it
    /// was caught up.
    pub log_end: u64,
    /// Up to where the leader had acknowledged sends to producers when it answered: the commit
    /// position under `SYNC_MASTER`, the durable log end under `ASYNC_MASTER`. A follower that
    /// holds less would lose acknowledged messages if promoted.
    pub acked_end: u64,
}

impl Wire for ReplicaBatch {
    fn put(&self, buf: &mut BytesMut) {
        put_list(buf, &self.epochs, |b, e| {
            b.put_u64(e.epoch);
            b.put_u64(e.start_position);
        });
        buf.put_u64(self.segment_size);
        put_list(buf, &self.records, |b, r| r.put(b));
        buf.put_u64(self.next_position);
        buf.put_u64(self.commit_position);
        put_list(buf, &self.checkpoints, |b, (name, bytes)| {
            put_str(b, name);
            put_bytes(b, bytes);
        });
        buf.put_u64(self.log_end);
        buf.put_u64(self.acked_end);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ReplicaBatch {
            epochs: get_list(buf, 16, "epochs", |b| {
                Ok(EpochStart {
                    epoch: get_u64(b, "epoch")?,
                    start_position: get_u64(b, "epoch start")?,
                })
            })?,
            segment_size: get_u64(buf, "segment size")?,
            records: get_list(buf, 40, "records", ReplicaRecord::get)?,
            next_position: get_u64(buf, "next position")?,
            commit_position: get_u64(buf, "commit position")?,
            checkpoints: get_list(buf, 8, "checkpoints", |b| {
                Ok((get_str(b, "checkpoint name")?, get_bytes(b, "checkpoint")?))
            })?,
            log_end: get_u64(buf, "log end")?,
            acked_end: get_u64(buf, "acked end")?,
        })
    }
}
