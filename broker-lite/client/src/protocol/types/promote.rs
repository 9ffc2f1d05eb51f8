//! Promotion of a follower to leader (issue 13): the admin call `broker-lite promote` makes, and
//! what a controller would make.
//!
//! The call goes to the follower itself (it is the node that knows how much of the leader's log
//! it holds). With `dry_run` it only reports, so a controller can ask every follower and pick
//! the one that holds the most; without it the follower refuses unless it is in sync (or `force`
//! is set), and otherwise starts a new epoch and serves as leader on the same address.

use bytes::{BufMut, Bytes, BytesMut};

use super::Wire;
use crate::protocol::error::DecodeError;
use crate::protocol::wire::*;

/// Asks a follower to become the leader.
///
/// ```
/// use broker_lite_client::protocol::{PromoteRequest, Request};
///
/// let promote = PromoteRequest { force: false, dry_run: true };
/// let request = Request::Promote(promote);
/// let decoded = Request::decode(request.code() as u16, request.encode_body()).unwrap();
/// assert_eq!(decoded, Request::Promote(promote));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PromoteRequest {
    /// Promote even when not in sync, losing what [`Promotion::unreplicated_bytes`] reports.
    pub force: bool,
    /// Only report whether a promotion would happen and what it would lose.
    pub dry_run: bool,
}

impl Wire for PromoteRequest {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.force));
        buf.put_u8(u8::from(self.dry_run));
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(PromoteRequest {
            force: get_bool(buf, "force")?,
            dry_run: get_bool(buf, "dry run")?,
        })
    }
}

/// A follower's answer to a [`PromoteRequest`]: where it stands against the leader it followed,
/// and whether it now leads.
///
/// Positions are byte positions in the commit log, which a follower shares with its leader.
///
/// ```
/// use broker_lite_client::protocol::Promotion;
///
/// let p = Promotion { promoted: false, in_sync: false, epoch: 3, position: 900,
///     leader_log_end: 1500, leader_acked_end: 1200, since_contact_ms: Some(40) };
/// assert_eq!(p.unreplicated_bytes(), 300);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// Whether the node is now the leader.
    pub promoted: bool,
    /// Whether it held everything the leader had acknowledged, at its last contact.
    pub in_sync: bool,
    /// The epoch it leads now (promoted), or the newest one it knows.
    pub epoch: u64,
    /// Its log end: it holds every record below it durably.
    pub position: u64,
    /// The leader's written log end at the last contact.
    pub leader_log_end: u64,
    /// Up to where the leader had acknowledged sends at the last contact.
    pub leader_acked_end: u64,
    /// Milliseconds since the leader last answered a fetch; `None` when it never did since
    /// this node started.
    pub since_contact_ms: Option<u64>,
}

impl Promotion {
    /// Bytes the leader had acknowledged that this node does not hold (as far as it knows):
    /// what a forced promotion loses.
    pub fn unreplicated_bytes(&self) -> u64 {
        self.leader_acked_end.saturating_sub(self.position)
    }

    /// Bytes of the leader's log this node does not hold, acknowledged or not.
    pub fn lag_bytes(&self) -> u64 {
        self.leader_log_end.saturating_sub(self.position)
    }

    /// The time since the last contact with the leader, for people.
    pub fn contact(&self) -> String {
        match self.since_contact_ms {
            Some(ms) => format!(
                "last contact with the leader {:.1} s ago",
                ms as f64 / 1000.0
            ),
            None => "no contact with the leader since this node started".into(),
        }
    }

    /// What promoting this node loses, for people: nothing when in sync; otherwise the log
    /// positions of the acknowledged records it lacks, as far as it knows.
    ///
    /// ```
    /// use broker_lite_client::protocol::Promotion;
    ///
    /// let p = Promotion { promoted: false, in_sync: false, epoch: 1, position: 500,
    ///     leader_log_end: 900, leader_acked_end: 700, since_contact_ms: Some(1500) };
    /// assert!(p.loss().contains("positions 500..700 (200 bytes;"));
    /// ```
    pub fn loss(&self) -> String {
        if self.since_contact_ms.is_none() {
            return format!(
                "unknown: {}; every acknowledged record the old leader held at or past log \
                 position {} is lost",
                self.contact(),
                self.position
            );
        }
        if self.in_sync {
            return format!(
                "nothing the old leader had acknowledged ({}; a leader that went on \
                 acknowledging with another follower after that is not seen here)",
                self.contact()
            );
        }
        format!(
            "the records the old leader acknowledged at log positions {}..{} ({} bytes; their \
             number is unknown here, this node never received them), and any it acknowledged \
             after the {}",
            self.position,
            self.leader_acked_end,
            self.unreplicated_bytes(),
            self.contact()
        )
    }
}

impl Wire for Promotion {
    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.promoted));
        buf.put_u8(u8::from(self.in_sync));
        buf.put_u64(self.epoch);
        buf.put_u64(self.position);
        buf.put_u64(self.leader_log_end);
        buf.put_u64(self.leader_acked_end);
        put_opt_u64(buf, self.since_contact_ms);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(Promotion {
            promoted: get_bool(buf, "promoted")?,
            in_sync: get_bool(buf, "in sync")?,
            epoch: get_u64(buf, "epoch")?,
            position: get_u64(buf, "position")?,
            leader_log_end: get_u64(buf, "leader log end")?,
            leader_acked_end: get_u64(buf, "leader acked end")?,
            since_contact_ms: get_opt_u64(buf, "since contact")?,
        })
    }
}
