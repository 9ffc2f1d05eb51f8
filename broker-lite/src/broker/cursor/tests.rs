//! Unit and model tests of the cursor bookkeeping.

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
