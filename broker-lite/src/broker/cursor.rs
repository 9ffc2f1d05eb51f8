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
mod tests;
