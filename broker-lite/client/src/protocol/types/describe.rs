//! The broker's durability settings, as reported by [`CommandCode::Describe`] (safeguard L2).
//!
//! [`CommandCode::Describe`]: crate::protocol::CommandCode::Describe

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::Wire;
use crate::protocol::error::DecodeError;
use crate::protocol::wire::*;

/// When the broker answers a send relative to the fsync of the message (safeguards B1, B2).
///
/// One type for the store's configuration and the wire: the interval travels in milliseconds.
/// Exhaustive on purpose, so that a new mode does not compile until the store implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// `SYNC_FLUSH` (safeguard B1): a send is answered after the fsync that covers it. One fsync
    /// covers every record that arrived while the previous one ran (group commit).
    Sync,
    /// `ASYNC_FLUSH` (safeguard B2): a send is answered once the record is in the page cache; a
    /// background flush runs every `interval`. Messages acknowledged within the last `interval`
    /// (plus the time one fsync takes) are lost if the machine loses power.
    Async {
        /// How often to fsync.
        interval: Duration,
    },
}

impl FlushMode {
    /// `ASYNC_FLUSH` with the default interval of 500 ms.
    pub const ASYNC_DEFAULT: FlushMode = FlushMode::Async {
        interval: Duration::from_millis(500),
    };
}

impl Wire for FlushMode {
    fn put(&self, buf: &mut BytesMut) {
        match self {
            FlushMode::Sync => buf.put_u8(0),
            FlushMode::Async { interval } => {
                buf.put_u8(1);
                buf.put_u64(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX));
            }
        }
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match get_u8(buf, "flush mode")? {
            0 => Ok(FlushMode::Sync),
            1 => Ok(FlushMode::Async {
                interval: Duration::from_millis(get_u64(buf, "flush interval")?),
            }),
            _ => Err(DecodeError::Invalid("flush mode")),
        }
    }
}

/// How a message is replicated before the producer is answered (safeguards B3, B4).
///
/// With `None` the send status only reflects the local flush, and `FlushSlaveTimeout` /
/// `SlaveNotAvailable` never occur; the leader of a replicated pair runs `SyncMaster` or
/// `AsyncMaster`, its followers `Follower` (they take no sends). One type for the broker's configuration
/// and the wire; exhaustive on purpose, so that a new mode does not compile until the broker
/// implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replication {
    /// A single node: no follower, so its disk is a single point of failure.
    #[default]
    None,
    /// `SYNC_MASTER` (B4): `SEND_OK` only once `min_sync_replicas` followers hold the message
    /// durably; `FLUSH_SLAVE_TIMEOUT` after `slave_timeout`, `SLAVE_NOT_AVAILABLE` at once when
    /// fewer followers are in sync. Consumers see only replicated messages.
    SyncMaster {
        /// Followers that must hold a message before `SEND_OK` (default 1).
        min_sync_replicas: u32,
        /// How long a send waits for them (default 3 s); also how long a silent follower stays
        /// in the in-sync set.
        slave_timeout: Duration,
    },
    /// `ASYNC_MASTER` (B3): answered after the local write; followers copy in the background, so
    /// a failover loses what they had not fetched yet (the lag that `describe` reports).
    AsyncMaster,
    /// A follower: it copies its leader's log and takes no sends until promoted.
    Follower,
}

impl Wire for Replication {
    fn put(&self, buf: &mut BytesMut) {
        match self {
            Replication::None => buf.put_u8(0),
            Replication::SyncMaster {
                min_sync_replicas,
                slave_timeout,
            } => {
                buf.put_u8(1);
                buf.put_u32(*min_sync_replicas);
                buf.put_u64(u64::try_from(slave_timeout.as_millis()).unwrap_or(u64::MAX));
            }
            Replication::AsyncMaster => buf.put_u8(2),
            Replication::Follower => buf.put_u8(3),
        }
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        match get_u8(buf, "replication")? {
            0 => Ok(Replication::None),
            1 => Ok(Replication::SyncMaster {
                min_sync_replicas: get_u32(buf, "min sync replicas")?,
                slave_timeout: Duration::from_millis(get_u64(buf, "slave timeout")?),
            }),
            2 => Ok(Replication::AsyncMaster),
            3 => Ok(Replication::Follower),
            _ => Err(DecodeError::Invalid("replication")),
        }
    }
}

/// What a broker reports about itself: its version and the settings that decide whether an
/// acknowledged message can still be lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDescription {
    /// The broker-lite crate version, e.g. `0.1.0`.
    pub version: String,
    /// Sync or async flush (B1, B2).
    pub flush_mode: FlushMode,
    /// Under sync flush, how long a send waits for its fsync before it is answered with
    /// `FLUSH_DISK_TIMEOUT`, in milliseconds.
    pub sync_flush_timeout_ms: u64,
    /// Replication before answering producers (B3, B4).
    pub replication: Replication,
    /// How long messages are kept (`fileReservedTime`, B5), in milliseconds.
    pub retention_ms: u64,
    /// The disk-usage ceiling of the segment files past which the oldest are deleted, if any.
    pub max_disk_bytes: Option<u64>,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
    /// An unsettled delivery is redelivered after this long (C3), in milliseconds.
    pub consume_timeout_ms: u64,
    /// Redeliveries before a message is dead-lettered (C8).
    pub max_reconsume_times: u32,
    /// Whether clients must authenticate (issue 16).
    pub authentication: bool,
    /// Whether the listener speaks TLS.
    pub tls: bool,
    /// The address the broker listens on.
    pub listen: String,
    /// Role, epoch, followers and lag of a replicated node; `None` for a single node.
    pub replication_status: Option<ReplicationStatus>,
}

/// What a replicated node reports about its replication (issue 13).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicationStatus {
    /// The newest leadership epoch this node knows.
    pub epoch: u64,
    /// A leader: its commit position (what `SYNC_MASTER` counts as replicated); a follower: the
    /// leader's commit position as last heard.
    pub commit_position: u64,
    /// The durable end of this node's log.
    pub log_end: u64,
    /// A follower's leader address; `None` on a leader.
    pub leader: Option<String>,
    /// A leader's followers (empty on a follower).
    pub followers: Vec<FollowerView>,
}

/// One follower as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerView {
    /// The follower's name.
    pub name: String,
    /// It holds every record below this log position durably.
    pub acked_position: u64,
    /// How far it is behind the leader's written log end, in bytes.
    pub lag_bytes: u64,
    /// Whether it is in the in-sync set.
    pub in_sync: bool,
    /// Milliseconds since its last fetch.
    pub since_fetch_ms: u64,
}

impl Wire for ReplicationStatus {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u64(self.epoch);
        buf.put_u64(self.commit_position);
        buf.put_u64(self.log_end);
        put_opt_str(buf, self.leader.as_deref());
        put_list(buf, &self.followers, |b, f| {
            put_str(b, &f.name);
            b.put_u64(f.acked_position);
            b.put_u64(f.lag_bytes);
            b.put_u8(u8::from(f.in_sync));
            b.put_u64(f.since_fetch_ms);
        });
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(ReplicationStatus {
            epoch: get_u64(buf, "epoch")?,
            commit_position: get_u64(buf, "commit position")?,
            log_end: get_u64(buf, "log end")?,
            leader: get_opt_str(buf, "leader")?,
            followers: get_list(buf, 27, "followers", |b| {
                Ok(FollowerView {
                    name: get_str(b, "follower name")?,
                    acked_position: get_u64(b, "acked position")?,
                    lag_bytes: get_u64(b, "lag")?,
                    in_sync: get_bool(b, "in sync")?,
                    since_fetch_ms: get_u64(b, "since fetch")?,
                })
            })?,
        })
    }
}

impl BrokerDescription {
    /// Whether anyone who can reach the port can do anything: no authentication and no TLS
    /// on an address other than loopback.
    ///
    /// ```
    /// # use broker_lite_client::protocol::{BrokerDescription, FlushMode, Replication};
    /// let mut d = BrokerDescription {
    ///     version: "0.1.0".into(), flush_mode: FlushMode::Sync, sync_flush_timeout_ms: 5000,
    ///     replication: Replication::None, retention_ms: 0, max_disk_bytes: None,
    ///     max_message_size: 1024, consume_timeout_ms: 15_000, max_reconsume_times: 16,
    ///     authentication: false, tls: false, listen: "0.0.0.0:9876".into(),
    ///     replication_status: None,
    /// };
    /// assert!(d.is_exposed());
    /// d.listen = "127.0.0.1:9876".into();
    /// assert!(!d.is_exposed());
    /// ```
    pub fn is_exposed(&self) -> bool {
        let loopback = self
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        let protected = self.authentication && self.tls;
        !(loopback || protected)
    }
}

impl Wire for BrokerDescription {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.version);
        self.flush_mode.put(buf);
        buf.put_u64(self.sync_flush_timeout_ms);
        self.replication.put(buf);
        buf.put_u64(self.retention_ms);
        put_opt_u64(buf, self.max_disk_bytes);
        buf.put_u64(self.max_message_size);
        buf.put_u64(self.consume_timeout_ms);
        buf.put_u32(self.max_reconsume_times);
        buf.put_u8(u8::from(self.authentication));
        buf.put_u8(u8::from(self.tls));
        put_str(buf, &self.listen);
        match &self.replication_status {
            Some(status) => {
                buf.put_u8(1);
                status.put(buf);
            }
            None => buf.put_u8(0),
        }
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(BrokerDescription {
            version: get_str(buf, "version")?,
            flush_mode: FlushMode::get(buf)?,
            sync_flush_timeout_ms: get_u64(buf, "sync flush timeout")?,
            replication: Replication::get(buf)?,
            retention_ms: get_u64(buf, "retention")?,
            max_disk_bytes: get_opt_u64(buf, "max disk bytes")?,
            max_message_size: get_u64(buf, "max message size")?,
            consume_timeout_ms: get_u64(buf, "consume timeout")?,
            max_reconsume_times: get_u32(buf, "max reconsume times")?,
            authentication: get_bool(buf, "authentication")?,
            tls: get_bool(buf, "tls")?,
            listen: get_str(buf, "listen")?,
            replication_status: if get_bool(buf, "replication status")? {
                Some(ReplicationStatus::get(buf)?)
            } else {
                None
            },
        })
    }
}
