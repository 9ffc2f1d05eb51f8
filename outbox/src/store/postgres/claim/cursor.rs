//! Where a claim starts reading the primary key: past the dead entries a draining relay leaves
//! behind, never past a row that is or may still become pending.
//!
//! **Why.** The claim deletes the rows it publishes, oldest first, so the low end of
//! `messages_pkey` fills with entries of deleted rows until a vacuum removes them (autovacuum
//! waits for a share of the table to be dead, and wakes up once a minute at most). A claim that
//! reads the index from its start steps over all of them every time: on a 1M backlog, half
//! drained, a claim of 500 read 1,370 index pages to find its first row (16 ms of a 20 ms claim on
//! this machine, under load); starting at the first pending row it read 4.
//!
//! **What may be skipped.** The design forbids a "last published sequence number" high-water
//! mark, because a transaction that took a lower sequence number may commit after a higher one was
//! published. A cursor is safe only if every row that is pending, or will become pending later,
//! has `seq >= start`. Rows that are pending but not claimable right now (scheduled, backing off,
//! held behind their key, locked by another relay, in another relay's partitions) count as
//! pending: `start` never passes the lowest pending row of any kind.
//!
//! **The rule.** Every claim statement also returns, read while it runs: the transactions holding
//! `RowExclusiveLock` on `outbox.messages` (`writers`), the lowest pending `seq >= start` in its
//! snapshot (`lowest`) and the sequence's last value (`last`). A *candidate* pairs the `last`
//! returned by one claim with the `writers` returned by the next. Once a later claim sees none of
//! those writers any more, the claim after it moves `start` to `min(last + 1, lowest)`.
//!
//! **Why it is safe.** Take a row that becomes visible as pending only after the snapshot `Y` of
//! the claim that moves `start`. (A row visible in `Y` is covered by `lowest`; and a row stays
//! visible from its insert's commit until its final removal, because a relay that gives a row back
//! re-inserts it with its `seq` in the same transaction that deleted it.) Its inserting
//! transaction `T` committed after `Y`, so it was still running when a claim before `Y` saw that
//! all candidate writers were gone (Postgres releases a transaction's locks only after its commit
//! is visible to new snapshots), so `T` was not among them: `T` took its `RowExclusiveLock` after
//! the writers were read. Every insert takes that lock before it evaluates the identity default
//! (when its statement is parsed, or when a cached plan is locked) and holds it until commit, so
//! `T` drew its `seq` from the sequence after `last` was read: `seq > last >= start - 1`. A
//! failure replay draws new sequence numbers the same way. The rule cannot see a row inserted with
//! an explicit `seq` (`OVERRIDING SYSTEM VALUE`) by anyone but a relay giving back what it took,
//! nor a sequence set back by hand; as a safety net the cursor goes back to the start of the table
//! every [`RESCAN_EVERY`], and at once when the sequence's last value falls below `start`.
//!
//! **Cost.** Nothing extra on the wire: the three readings ride on the claim statement. The
//! cursor trails the relay by the transactions that were open when the writers were read (its
//! own batch in hand and batch claimed ahead among them), a few batches. A long-running writer
//! transaction, or a pending row that waits (a retry backing off, a scheduled message), holds the
//! cursor where it is; claims then cost what they cost without it, and vacuum (see the migration
//! `20261203120000_outbox_autovacuum.sql`) is what bounds the dead entries behind it.

use std::time::{Duration, Instant};

/// How often the cursor goes back to the start of the table regardless: a row inserted outside
/// the rule (an explicit low `seq`) is claimed within this long. One claim then reads the dead
/// entries once.
pub(crate) const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// What a claim statement read besides the rows it claimed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Horizon {
    /// Virtual transaction ids holding `RowExclusiveLock` on `outbox.messages` while it ran.
    pub(crate) writers: Vec<String>,
    /// The lowest pending `seq >= start` in its snapshot, if any.
    pub(crate) lowest: Option<i64>,
    /// The sequence's last value while it ran; `None` before the first insert, or without the
    /// privilege to read it (then the cursor stays at the start of the table).
    pub(crate) last: Option<i64>,
}

/// The lower bound of a relay's claims (see the module docs for the rule and its proof).
#[derive(Debug)]
pub(crate) struct Cursor {
    /// Every row that is pending or may become pending has `seq >= start`.
    start: i64,
    /// `last` of the previous claim, to pair with the writers of the next one.
    last: Option<i64>,
    /// A bound waiting for its writers to end.
    candidate: Option<Candidate>,
    /// A bound whose writers ended: the next claim's `lowest` completes it.
    ready: Option<i64>,
    /// When `start` was last reset to the start of the table.
    rescanned: Instant,
}

#[derive(Debug)]
struct Candidate {
    last: i64,
    writers: Vec<String>,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            start: 0,
            last: None,
            candidate: None,
            ready: None,
            rescanned: Instant::now(),
        }
    }
}

impl Cursor {
    /// Where the next claim starts.
    pub(crate) fn start(&self) -> i64 {
        self.start
    }

    /// Takes in what a claim statement read, in the order the claims ran.
    pub(crate) fn observe(&mut self, horizon: Horizon) {
        self.observe_at(horizon, Instant::now());
    }

    fn observe_at(&mut self, horizon: Horizon, now: Instant) {
        let Horizon {
            writers,
            lowest,
            last,
        } = horizon;
        // A sequence set back (`TRUNCATE … RESTART IDENTITY`, `setval`) hands out numbers below
        // `start` again; so does nothing else. Start over.
        if last.is_some_and(|last| last < self.start - 1) {
            tracing::warn!(
                start = self.start,
                last,
                "outbox sequence went back: claims read the table from its start again"
            );
            self.reset(now);
            return;
        }
        if now.saturating_duration_since(self.rescanned) >= RESCAN_EVERY {
            self.reset(now);
            self.last = last;
            return;
        }
        // `lowest` was read in a snapshot taken after an earlier claim saw the writers gone.
        if let Some(bound) = self.ready.take() {
            let next = lowest.map_or(bound + 1, |lowest| lowest.min(bound + 1));
            self.start = self.start.max(next);
        }
        if let Some(candidate) = &self.candidate
            && !candidate.writers.iter().any(|w| writers.contains(w))
        {
            self.ready = Some(candidate.last);
            self.candidate = None;
        }
        // `self.last` was read by an earlier statement than `writers`: every transaction that
        // took a sequence number after it is either among them or locked the table later.
        if self.candidate.is_none()
            && let Some(last) = self.last
        {
            self.candidate = Some(Candidate { last, writers });
        }
        self.last = last;
    }

    fn reset(&mut self, now: Instant) {
        *self = Self {
            rescanned: now,
            ..Self::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn horizon(writers: &[&str], lowest: Option<i64>, last: i64) -> Horizon {
        Horizon {
            writers: writers.iter().map(|w| (*w).to_owned()).collect(),
            lowest,
            last: Some(last),
        }
    }

    #[test]
    fn moves_only_after_the_writers_seen_after_the_last_value_are_gone() {
        let mut cursor = Cursor::default();
        // Last value 100 read; the writers are read by the next claim.
        cursor.observe(horizon(&["3/1"], Some(1), 100));
        cursor.observe(horizon(&["3/1", "4/7"], Some(1), 120));
        assert_eq!(cursor.start(), 0);
        // 4/7 (seen after 100 was read) still runs: nothing moves, however long.
        for _ in 0..10 {
            cursor.observe(horizon(&["4/7", "5/2"], Some(1), 150));
        }
        assert_eq!(cursor.start(), 0);
        // Gone: the next claim's lowest pending row completes the bound.
        cursor.observe(horizon(&["5/2"], Some(40), 150));
        assert_eq!(cursor.start(), 0);
        cursor.observe(horizon(&["5/2"], Some(90), 160));
        assert_eq!(cursor.start(), 90);
    }

    #[test]
    fn never_passes_the_last_value_of_its_candidate() {
        let mut cursor = Cursor::default();
        cursor.observe(horizon(&[], None, 100));
        cursor.observe(horizon(&[], None, 100));
        cursor.observe(horizon(&[], None, 100));
        cursor.observe(horizon(&[], None, 100));
        // Nothing pending: the bound is the last value seen before the writers, plus one.
        assert_eq!(cursor.start(), 101);
    }

    #[test]
    fn goes_back_to_the_start_when_the_sequence_does() {
        let mut cursor = Cursor::default();
        for _ in 0..4 {
            cursor.observe(horizon(&[], Some(500), 600));
        }
        assert_eq!(cursor.start(), 500);
        cursor.observe(horizon(&[], None, 3));
        assert_eq!(cursor.start(), 0);
    }

    #[test]
    fn goes_back_to_the_start_every_rescan_interval() {
        let mut cursor = Cursor::default();
        let t0 = cursor.rescanned;
        for _ in 0..4 {
            cursor.observe_at(horizon(&[], Some(500), 600), t0);
        }
        assert_eq!(cursor.start(), 500);
        cursor.observe_at(horizon(&[], Some(500), 600), t0 + RESCAN_EVERY);
        assert_eq!(cursor.start(), 0);
    }

    #[test]
    fn without_the_last_value_it_stays_at_the_start() {
        let mut cursor = Cursor::default();
        for _ in 0..5 {
            cursor.observe(Horizon {
                writers: vec![],
                lowest: Some(500),
                last: None,
            });
        }
        assert_eq!(cursor.start(), 0);
    }
}
