//! One consumer's position in one queue: the committed offset plus the messages between it and
//! the read position that are in flight, waiting for redelivery, or acked out of order.
//!
//! Pure bookkeeping, no I/O: the broker reserves offsets here under its lock, reads the records
//! outside it, and settles them here again.
//!
//! # Handing a queue to a new owner
//!
//! When a queue moves (rebalance, a member leaves, its connection closes), the offsets in flight
//! at the old owner are released for the new owner in one of two ways:
//!
//! - an **unordered** delivery is released at once ([`Cursor::release_others`]): the new owner
//!   gets it again while the old owner may still be handling it. That is a duplicate, which
//!   at-least-once consumers already tolerate, and it keeps the queue moving.
//! - an **ordered** delivery (`InFlight { ordered: true }`) stays with its holder until the holder
//!   settles it (ack, or nack: the message then waits in place and goes to the new owner when
//!   due), its lease runs out (the consume timeout), or the holder is gone for good
//!   ([`Cursor::release_client`]: its connection closed, or it unsubscribed). Ordered delivery
//!   hands out the next offset only when nothing is in flight, so while the old owner still
//!   runs message N the new owner gets neither N nor N+1: there is never a second message of an
//!   ordered queue running anywhere.

use std::collections::BTreeMap;

use uuid::Uuid;

/// The state of one delivered, not yet committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Delivered to `client_id`; redelivered at `deadline_ms` (consume timeout). `ordered`: it
    /// was delivered under an ordered subscription, so a rebalance does not take it from its
    /// holder (see the module docs).
    InFlight {
        client_id: String,
        deadline_ms: u64,
        ordered: bool,
    },
    /// To be delivered again at `due_ms` (after a nack, a timeout, a rebalance or a restart).
    Waiting { due_ms: u64 },
    /// Being moved to the dead-letter topic; not delivered meanwhile.
    Parked,
    /// Settled, but an older offset is not yet.
    Acked,
}

/// One offset between `committed` and `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) slot: Slot,
    /// Deliveries so far; the receipt of the latest one carries this number.
    pub(crate) attempts: u32,
    /// Redeliveries after a nack or a consume timeout.
    pub(crate) reconsume_times: u32,
    /// When it was first delivered, ms since the epoch.
    pub(crate) first_delivered_ms: u64,
    /// The message id, once read (for the trace).
    pub(crate) message_id: Option<Uuid>,
}

/// An offset reserved for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reserved {
    pub(crate) offset: u64,
    pub(crate) attempt: u32,
    pub(crate) reconsume_times: u32,
    pub(crate) first_delivered_ms: u64,
}

/// Who a delivery goes to, and when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) now_ms: u64,
    /// When the consume timeout expires.
    pub(crate) deadline_ms: u64,
}

/// What an ack found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckResult {
    /// Settled now.
    Acked,
    /// Already settled (idempotent ack).
    AlreadySettled,
    /// The offset was never delivered.
    NeverDelivered,
}

/// A consumer's position in one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The next offset never delivered.
    pub(crate) next: u64,
    /// Delivered offsets at or above the committed one, by offset.
    pub(crate) pending: BTreeMap<u64, Pending>,
}

impl Cursor {
    /// A cursor whose next undelivered offset is `offset`.
    pub(crate) fn at(offset: u64) -> Self {
        Cursor {
            next: offset,
            pending: BTreeMap::new(),
        }
    }

    /// The lowest offset not acked: consumption resumes here after a restart.
    pub(crate) fn committed(&self) -> u64 {
        self.pending
            .iter()
            .find(|(_, p)| p.slot != Slot::Acked)
            .map_or(self.next, |(o, _)| *o)
    }

    /// Offsets delivered and not settled.
    pub(crate) fn unsettled(&self) -> usize {
        self.pending
            .values()
            .filter(|p| p.slot != Slot::Acked)
            .count()
    }

    fn compact(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().slot != Slot::Acked {
                break;
            }
            entry.remove();
        }
    }

    fn in_flight(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p.slot, Slot::InFlight { .. } | Slot::Parked))
    }

    /// Waiting offsets that are due, turned in flight for `client_id`. Ordered: only the lowest
    /// unsettled offset, and only when nothing is in flight.
    pub(crate) fn take_due(
        &mut self,
        to: Holder<'_>,
        limit: usize,
        ordered: bool,
    ) -> Vec<Reserved> {
        if ordered && self.in_flight() {
            return Vec::new();
        }
        let limit = if ordered { limit.min(1) } else { limit };
        let mut out = Vec::new();
        for (offset, p) in &mut self.pending {
            if out.len() >= limit {
                break;
            }
            match p.slot {
                Slot::Waiting { due_ms } if due_ms <= to.now_ms => {
                    p.slot = Slot::InFlight {
                        client_id: to.client_id.to_string(),
                        deadline_ms: to.deadline_ms,
                        ordered,
                    };
                    p.attempts += 1;
                    out.push(Reserved {
                        offset: *offset,
                        attempt: p.attempts,
                        reconsume_times: p.reconsume_times,
                        first_delivered_ms: p.first_delivered_ms,
                    });
                }
                Slot::Acked => {}
                _ if ordered => break,
                _ => {}
            }
        }
        out
    }

    /// Reserves up to `limit` new offsets below `available` for `to`. Ordered: one, and only
    /// when nothing is unsettled. Never lets `next` run more than `cap` offsets ahead of the
    /// committed one.
    pub(crate) fn reserve_new(
        &mut self,
        available: u64,
        limit: usize,
        ordered: bool,
        cap: usize,
        to: Holder<'_>,
    ) -> Vec<Reserved> {
        if ordered && self.unsettled() > 0 {
            return Vec::new();
        }
        let limit = if ordered { limit.min(1) } else { limit };
        // The span from the committed offset to the next one bounds the pending map, acked
        // entries included (RocketMQ's consumeConcurrentlyMaxSpan).
        let span = (self.next - self.committed()) as usize;
        let limit = limit.min(cap.saturating_sub(span)) as u64;
        let end = available.min(self.next.saturating_add(limit));
        let mut out = Vec::new();
        for offset in self.next..end {
            self.pending.insert(
                offset,
                Pending {
                    slot: Slot::InFlight {
                        client_id: to.client_id.to_string(),
                        deadline_ms: to.deadline_ms,
                        ordered,
                    },
                    attempts: 1,
                    reconsume_times: 0,
                    first_delivered_ms: to.now_ms,
                    message_id: None,
                },
            );
            out.push(Reserved {
                offset,
                attempt: 1,
                reconsume_times: 0,
                first_delivered_ms: to.now_ms,
            });
        }
        self.next = self.next.max(end);
        out
    }

    /// Remembers the id of the message at `offset`.
    pub(crate) fn set_message_id(&mut self, offset: u64, id: Uuid) {
        if let Some(p) = self.pending.get_mut(&offset) {
            p.message_id = Some(id);
        }
    }

    /// The id of the message at a pending `offset`, when known.
    pub(crate) fn message_id(&self, offset: u64) -> Option<Uuid> {
        self.pending.get(&offset).and_then(|p| p.message_id)
    }

    /// Settles `offset` (any attempt: a late ack of an older delivery still counts).
    pub(crate) fn ack(&mut self, offset: u64) -> AckResult {
        if offset >= self.next {
            return AckResult::NeverDelivered;
        }
        let result = match self.pending.get_mut(&offset) {
            None
            | Some(Pending {
                slot: Slot::Acked, ..
            }) => AckResult::AlreadySettled,
            Some(p) => {
                p.slot = Slot::Acked;
                AckResult::Acked
            }
        };
        self.compact();
        result
    }

    /// Settles `offset`, which the tag filter of `client_id` skipped, if that member still
    /// holds its delivery `attempt`. A reservation released while the pull read the record (its
    /// holder lost the queue or left, and a member with another filter may own it now) is left
    /// to its next holder to deliver or skip: nothing is settled unread on a stale reservation.
    /// Returns whether it was settled.
    pub(crate) fn settle_skipped(&mut self, offset: u64, attempt: u32, client_id: &str) -> bool {
        if self.current(offset, attempt, client_id).is_none() {
            return false;
        }
        self.ack(offset) == AckResult::Acked
    }

    /// The pending entry of the current delivery `attempt` of `offset` to `client_id`, if that
    /// delivery is still in flight.
    pub(crate) fn current(
        &mut self,
        offset: u64,
        attempt: u32,
        client_id: &str,
    ) -> Option<&mut Pending> {
        self.pending.get_mut(&offset).filter(|p| {
            p.attempts == attempt
                && matches!(&p.slot, Slot::InFlight { client_id: c, .. } if c == client_id)
        })
    }

    /// Puts `offset` back for redelivery at `due_ms`, counting a redelivery when `bump`.
    pub(crate) fn wait(&mut self, offset: u64, due_ms: u64, bump: bool) {
        if let Some(p) = self.pending.get_mut(&offset) {
            if p.slot != Slot::Acked {
                p.slot = Slot::Waiting { due_ms };
                if bump {
                    p.reconsume_times += 1;
                }
            }
        }
    }

    /// Keeps `offset` from being delivered while it is moved to the dead-letter topic.
    pub(crate) fn park(&mut self, offset: u64) {
        if let Some(p) = self.pending.get_mut(&offset) {
            p.slot = Slot::Parked;
        }
    }

    /// In-flight offsets whose consume timeout passed: `(offset, client_id, reconsume_times)`.
    pub(crate) fn timed_out(&self, now_ms: u64) -> Vec<(u64, String, u32)> {
        self.pending
            .iter()
            .filter_map(|(o, p)| match &p.slot {
                Slot::InFlight {
                    client_id,
                    deadline_ms,
                    ..
                } if *deadline_ms <= now_ms => Some((*o, client_id.clone(), p.reconsume_times)),
                _ => None,
            })
            .collect()
    }

    /// Puts every unordered in-flight offset not held by `owner` back for immediate redelivery
    /// (its holder lost the queue in a rebalance). Ordered ones stay with their holder until it
    /// settles them, their consume timeout passes or [`release_client`](Self::release_client)
    /// gives them up. Returns how many were released.
    pub(crate) fn release_others(&mut self, owner: Option<&str>, now_ms: u64) -> usize {
        self.release(now_ms, |client_id, ordered| {
            !ordered && Some(client_id) != owner
        })
    }

    /// Puts every offset in flight at `client_id`, ordered or not, back for immediate
    /// redelivery: the member is gone (its connection closed, or it left). Returns how many.
    pub(crate) fn release_client(&mut self, client_id: &str, now_ms: u64) -> usize {
        self.release(now_ms, |holder, _| holder == client_id)
    }

    fn release(&mut self, now_ms: u64, mut which: impl FnMut(&str, bool) -> bool) -> usize {
        let mut n = 0;
        for p in self.pending.values_mut() {
            if let Slot::InFlight {
                client_id, ordered, ..
            } = &p.slot
            {
                if which(client_id, *ordered) {
                    p.slot = Slot::Waiting { due_ms: now_ms };
                    n += 1;
                }
            }
        }
        n
    }

    /// Skips everything below `min` (removed by retention); returns how many unsettled offsets
    /// were lost.
    pub(crate) fn skip_to(&mut self, min: u64) -> u64 {
        let committed = self.committed();
        if committed >= min {
            return 0;
        }
        let kept = self.pending.split_off(&min);
        let lost_pending = self.pending.len() as u64;
        let acked_lost = self
            .pending
            .values()
            .filter(|p| p.slot == Slot::Acked)
            .count() as u64;
        self.pending = kept;
        let never_delivered = min.saturating_sub(self.next);
        self.next = self.next.max(min);
        lost_pending - acked_lost + never_delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(client_id: &str, now_ms: u64, deadline_ms: u64) -> Holder<'_> {
        Holder {
            client_id,
            now_ms,
            deadline_ms,
        }
    }

    #[test]
    fn committed_follows_the_lowest_unacked_offset() {
        let mut c = Cursor::at(5);
        let r = c.reserve_new(10, 3, false, 100, h("a", 0, 1000));
        assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(c.committed(), 5);
        assert_eq!(c.ack(6), AckResult::Acked);
        assert_eq!(c.committed(), 5);
        assert_eq!(c.ack(5), AckResult::Acked);
        assert_eq!(c.committed(), 7);
        assert_eq!(c.ack(5), AckResult::AlreadySettled);
        assert_eq!(c.ack(9), AckResult::NeverDelivered);
        assert_eq!(c.ack(7), AckResult::Acked);
        assert_eq!(c.committed(), 8);
        assert!(c.pending.is_empty());
    }

    #[test]
    fn ordered_delivers_one_at_a_time_and_redelivers_in_place() {
        let mut c = Cursor::at(0);
        assert_eq!(c.reserve_new(10, 5, true, 100, h("a", 0, 1000)).len(), 1);
        assert!(c.reserve_new(10, 5, true, 100, h("a", 0, 1000)).is_empty());
        assert!(c.current(0, 1, "a").is_some());
        c.wait(0, 50, true);
        assert!(c.reserve_new(10, 5, true, 100, h("a", 0, 1000)).is_empty());
        assert!(c.take_due(h("a", 49, 1000), 5, true).is_empty());
        let again = c.take_due(h("a", 50, 1000), 5, true);
        assert_eq!(again[0].offset, 0);
        assert_eq!(again[0].attempt, 2);
        assert_eq!(again[0].reconsume_times, 1);
        c.ack(0);
        assert_eq!(
            c.reserve_new(10, 5, true, 100, h("a", 0, 1000))[0].offset,
            1
        );
    }

    #[test]
    fn timeouts_rebalance_and_caps() {
        let mut c = Cursor::at(0);
        c.reserve_new(10, 4, false, 3, h("a", 0, 100));
        assert_eq!(c.unsettled(), 3);
        assert!(c.reserve_new(10, 4, false, 3, h("a", 0, 100)).is_empty());
        assert_eq!(c.timed_out(99).len(), 0);
        assert_eq!(c.timed_out(100).len(), 3);
        assert_eq!(c.release_others(Some("b"), 5), 3);
        let r = c.take_due(h("b", 5, 200), 10, false);
        assert_eq!(r.len(), 3);
        assert!(c.current(0, 1, "a").is_none(), "the old receipt is stale");
        assert!(c.current(0, 2, "b").is_some());
    }

    #[test]
    fn a_rebalance_leaves_an_ordered_delivery_with_its_holder() {
        let mut c = Cursor::at(0);
        let n = c.reserve_new(10, 1, true, 100, h("old", 0, 100));
        assert_eq!(n[0].offset, 0);
        // The queue moves to "new": neither N nor N+1 while "old" still runs N.
        assert_eq!(c.release_others(Some("new"), 5), 0);
        assert!(c.take_due(h("new", 5, 200), 1, true).is_empty());
        assert!(c.reserve_new(10, 1, true, 100, h("new", 5, 200)).is_empty());
        // The old owner settles N: the new owner goes on with N+1.
        assert!(
            c.current(0, 1, "old").is_some(),
            "the old receipt still counts"
        );
        assert_eq!(c.ack(0), AckResult::Acked);
        let next = c.reserve_new(10, 1, true, 100, h("new", 6, 200));
        assert_eq!(next[0].offset, 1);
    }

    #[test]
    fn an_ordered_delivery_moves_once_its_holder_nacks_times_out_or_is_gone() {
        for how in ["nack", "timeout", "gone"] {
            let mut c = Cursor::at(0);
            c.reserve_new(10, 1, true, 100, h("old", 0, 100));
            c.release_others(Some("new"), 5);
            match how {
                "nack" => c.wait(0, 5, true),
                "timeout" => {
                    let late = c.timed_out(100);
                    assert_eq!(late.len(), 1);
                    c.wait(late[0].0, 100, true);
                }
                _ => assert_eq!(c.release_client("old", 5), 1),
            }
            let again = c.take_due(h("new", 100, 300), 1, true);
            assert_eq!(again.len(), 1, "{how}");
            assert_eq!((again[0].offset, again[0].attempt), (0, 2), "{how}");
            assert!(
                c.current(0, 1, "old").is_none(),
                "{how}: the old receipt is stale"
            );
        }
    }

    #[test]
    fn release_client_frees_only_that_clients_deliveries() {
        let mut c = Cursor::at(0);
        c.reserve_new(10, 2, false, 100, h("a", 0, 100));
        c.reserve_new(10, 1, false, 100, h("b", 0, 100));
        assert_eq!(c.release_client("a", 1), 2);
        assert!(c.current(2, 1, "b").is_some());
        assert_eq!(c.take_due(h("b", 1, 100), 10, false).len(), 2);
    }

    #[test]
    fn a_skip_on_a_released_reservation_settles_nothing() {
        let mut c = Cursor::at(0);
        let r = c.reserve_new(10, 2, false, 100, h("a", 0, 100));
        // "a" reads both records, finds its filter skips them, but meanwhile loses one of them.
        c.release_client("a", 1);
        c.take_due(h("b", 1, 100), 1, false);
        assert!(!c.settle_skipped(r[0].offset, r[0].attempt, "a"));
        assert!(!c.settle_skipped(r[1].offset, r[1].attempt, "a"));
        assert_eq!(c.committed(), 0, "nothing settled unread");
        // The new holder's skip counts.
        assert!(c.settle_skipped(0, 2, "b"));
        assert_eq!(c.committed(), 1);
    }

    #[test]
    fn a_stuck_head_bounds_the_span() {
        let mut c = Cursor::at(0);
        c.reserve_new(10, 1, false, 3, h("a", 0, 100));
        c.wait(0, 1_000_000, true);
        let r = c.reserve_new(10, 10, false, 3, h("a", 0, 100));
        assert_eq!(r.len(), 2);
        for r in r {
            c.ack(r.offset);
        }
        assert!(c.reserve_new(10, 10, false, 3, h("a", 0, 100)).is_empty());
        c.ack(0);
        assert_eq!(c.reserve_new(10, 10, false, 3, h("a", 0, 100)).len(), 3);
    }

    mod model {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::super::*;
        use super::h;

        #[derive(Debug, Clone)]
        enum Op {
            Reserve(usize),
            Ack(u64),
            Nack(u64),
            TakeDue,
            Advance(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (1usize..5).prop_map(Op::Reserve),
                (0u64..40).prop_map(Op::Ack),
                (0u64..40).prop_map(Op::Nack),
                Just(Op::TakeDue),
                (1u64..200).prop_map(Op::Advance),
            ]
        }

        proptest! {
            /// The committed offset is always the lowest offset not acked, every offset is
            /// delivered before it is committed, and the span stays within the cap.
            #[test]
            fn committed_is_the_lowest_unacked(ops in proptest::collection::vec(op(), 1..80), ordered: bool) {
                let mut c = Cursor::at(0);
                let mut now = 0;
                let mut delivered = BTreeSet::new();
                let mut acked = BTreeSet::new();
                let mut attempts = std::collections::HashMap::new();
                for op in ops {
                    match op {
                        Op::Reserve(n) => {
                            for r in c.reserve_new(40, n, ordered, 8, h("a", now, now + 100)) {
                                prop_assert!(delivered.insert(r.offset), "new offsets are new");
                                attempts.insert(r.offset, r.attempt);
                            }
                        }
                        Op::Ack(o) => {
                            let before = c.ack(o);
                            if delivered.contains(&o) {
                                prop_assert_ne!(before, AckResult::NeverDelivered);
                                acked.insert(o);
                            } else {
                                prop_assert_eq!(before, AckResult::NeverDelivered);
                            }
                        }
                        Op::Nack(o) => {
                            let attempt = attempts.get(&o).copied().unwrap_or(0);
                            if c.current(o, attempt, "a").is_some() {
                                c.wait(o, now + 10, true);
                            }
                        }
                        Op::TakeDue => {
                            for r in c.take_due(h("a", now, now + 100), 5, ordered) {
                                prop_assert!(delivered.contains(&r.offset));
                                prop_assert!(!acked.contains(&r.offset));
                                attempts.insert(r.offset, r.attempt);
                            }
                        }
                        Op::Advance(ms) => {
                            now += ms;
                            for (o, _, _) in c.timed_out(now) {
                                c.wait(o, now, true);
                            }
                        }
                    }
                    let lowest = (0..c.next).find(|o| !acked.contains(o)).unwrap_or(c.next);
                    prop_assert_eq!(c.committed(), lowest);
                    prop_assert!(c.next - c.committed() <= 8);
                    if ordered {
                        let in_flight = c.pending.values().filter(|p| matches!(p.slot, Slot::InFlight { .. })).count();
                        prop_assert!(in_flight <= 1);
                    }
                }
            }
        }
    }

    #[test]
    fn retention_skips_lost_offsets() {
        let mut c = Cursor::at(0);
        c.reserve_new(10, 2, false, 10, h("a", 0, 100));
        c.ack(1);
        assert_eq!(c.skip_to(5), 1 + 3);
        assert_eq!(c.committed(), 5);
        assert_eq!(c.skip_to(3), 0);
    }
}
