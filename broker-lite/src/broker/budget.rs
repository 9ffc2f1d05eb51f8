//! The byte budget of one pull (issue 12, item 4).
//!
//! A pull is bounded by bytes as well as by count: a server must fit its answer in one frame,
//! and an answer over the frame limit cannot be sent at all. Before this budget existed the
//! broker reserved by count only, the server found the answer too large and replied with an
//! error while the messages stayed reserved: with three 3 MiB messages, or 128 of 64 KiB, no
//! handler ever ran and every message was dead-lettered after its consume timeouts.
//!
//! The broker sizes a pull **before** it reserves anything, from the frame size of each record
//! in the store's in-memory index ([`Store::record_lens`](crate::storage::Store::record_lens)),
//! and stops reserving when the next message would exceed the budget. The first message of a
//! pull is always taken, whatever its size, so that a large message is never starved. After the
//! read it charges each delivery its exact cost (the index does not know the property count, and
//! each property costs two bytes more on the wire than in the log) and gives back, undelivered,
//! any reservation that no longer fits: that can only happen with many properties.
//!
//! The cost of a delivery is an upper bound of its size in the wire protocol's pull answer: the
//! log frame of its record, two bytes per property, the receipt's strings and
//! [`DELIVERY_OVERHEAD`] for the fixed fields. The server passes its frame limit, less the
//! answer's own framing, as [`PullRequest::max_bytes`](super::PullRequest::max_bytes).

use crate::storage::StoredRecord;

/// Bytes a delivery costs on top of its record's log frame and the receipt's strings: the
/// receipt's fixed fields and length prefixes (27), the reconsume count and first delivery time
/// (12), and the wire's longer length prefixes (at most 2 more than the log's, besides the 2 per
/// property counted apart), rounded up.
pub(crate) const DELIVERY_OVERHEAD: usize = 64;

/// What is left of a pull's byte budget.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    limit: usize,
    used: usize,
    taken: usize,
    /// Receipt strings of every delivery of this pull: group, client id and topic.
    receipt: usize,
}

impl Budget {
    /// A budget of `limit` bytes for deliveries whose receipts carry these strings.
    pub(crate) fn new(limit: usize, group: &str, client_id: &str, topic: &str) -> Self {
        Budget {
            limit,
            used: 0,
            taken: 0,
            receipt: group.len() + client_id.len() + topic.len(),
        }
    }

    /// The cost of a record whose log frame is `frame_len` bytes, before it is read.
    pub(crate) fn estimate(&self, frame_len: u32) -> usize {
        frame_len as usize + self.receipt + DELIVERY_OVERHEAD
    }

    /// The cost of a record once read.
    pub(crate) fn exact(&self, record: &StoredRecord) -> usize {
        record.encoded_len() + 2 * record.properties.len() + self.receipt + DELIVERY_OVERHEAD
    }

    /// Takes `cost` if it fits, or if nothing was taken yet (a pull returns at least one
    /// message). Returns whether it was taken.
    pub(crate) fn take(&mut self, cost: usize) -> bool {
        if self.taken > 0 && self.used.saturating_add(cost) > self.limit {
            return false;
        }
        self.used = self.used.saturating_add(cost);
        self.taken += 1;
        true
    }

    /// Whether a later [`take`](Self::take) can succeed at all.
    pub(crate) fn exhausted(&self) -> bool {
        self.taken > 0 && self.used >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_message_always_fits_then_the_limit_holds() {
        let mut b = Budget::new(100, "g", "c", "t");
        assert!(b.take(500), "the first one is taken whatever its size");
        assert!(!b.take(1));
        let mut b = Budget::new(100, "", "", "");
        assert!(b.take(60));
        assert!(!b.take(41));
        assert!(b.take(40));
        assert!(b.exhausted());
    }
}
