//! Broker-side deduplication of sends by message id (issue 13).
//!
//! A producer retries `FLUSH_SLAVE_TIMEOUT`, `SLAVE_NOT_AVAILABLE`, lost answers and timeouts
//! with the *same* message id, and a relay that restarts re-sends what it had not marked sent.
//! Without deduplication each retry stores another copy. The broker remembers the newest
//! [`WINDOW`] producer sends (id, topic, queue, offset, log position); a send whose id and topic
//! are in the window is not stored again: it is answered with the first copy's queue and offset,
//! and with the status that copy has *now* (under `SYNC_MASTER` the send waits for that copy's
//! replicas), so a retry of an unreplicated send becomes `SEND_OK` once it is replicated.
//!
//! Two sends of one id at the same instant, or twice in one batch, must not both be stored: a
//! send *claims* its id in the window before it hands the record to the store
//! ([`SendWindow::claim`]), under the same lock as the lookup. A second send that finds the id
//! claimed waits for the first to finish, then is answered from its copy (or, if the first
//! failed and released its claim, claims the id itself); within one batch a repeated id is
//! answered from the batch's own copy.
//!
//! The window is rebuilt from the log when the broker opens, so it survives a restart and a
//! failover (the new leader holds the replicated log). Broker-made copies (dead letters, re-driven
//! messages) keep the original id but go to other topics, and are not in the window.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use tokio::sync::watch;
use uuid::Uuid;

/// How many recent sends are remembered for deduplication.
pub(crate) const WINDOW: usize = 262_144;

/// Where the first copy of a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    topic: u64,
    pub(crate) queue_id: u32,
    pub(crate) queue_offset: u64,
    pub(crate) log_position: u64,
}

/// What a send finds when it claims its id.
#[derive(Debug)]
pub(crate) enum Claim {
    /// A copy is stored: answer from it.
    Stored(Sent),
    /// Another send holds the claim and is storing its copy: wait until the receiver sees the
    /// sender closed (the claim released), then claim again.
    Pending(watch::Receiver<()>),
    /// This send holds the claim now; dropping the sender (after [`SendWindow::insert`] or a
    /// failure, with [`SendWindow::release`]) wakes the waiters.
    Claimed(watch::Sender<()>),
}

/// The newest [`WINDOW`] sends by message id, and the ids being stored right now.
#[derive(Debug, Default)]
pub(crate) struct SendWindow {
    by_id: HashMap<Uuid, Sent>,
    order: VecDeque<Uuid>,
    /// Claimed ids (with the topic's hash) whose copy is not stored yet.
    pending: HashMap<(Uuid, u64), watch::Receiver<()>>,
}

fn topic_hash(topic: &str) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    h.finish()
}

impl SendWindow {
    /// Remembers a stored producer send; the first copy of an id wins.
    pub(crate) fn insert(
        &mut self,
        id: Uuid,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        log_position: u64,
    ) {
        if self.by_id.contains_key(&id) {
            return;
        }
        if self.order.len() >= WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.by_id.remove(&old);
        }
        self.by_id.insert(
            id,
            Sent {
                topic: topic_hash(topic),
                queue_id,
                queue_offset,
                log_position,
            },
        );
        self.order.push_back(id);
    }

    /// The first copy of `id` in `topic`, if it is in the window.
    pub(crate) fn get(&self, id: &Uuid, topic: &str) -> Option<Sent> {
        self.by_id
            .get(id)
            .filter(|s| s.topic == topic_hash(topic))
            .copied()
    }

    /// Looks `id` up in `topic` and, when it is neither stored nor claimed, claims it.
    pub(crate) fn claim(&mut self, id: Uuid, topic: &str) -> Claim {
        if let Some(sent) = self.get(&id, topic) {
            return Claim::Stored(sent);
        }
        let key = (id, topic_hash(topic));
        // A claim whose sender is gone without a release is stale (a send dropped mid-way).
        if let Some(waiting) = self.pending.get(&key)
            && waiting.has_changed().is_ok()
        {
            return Claim::Pending(waiting.clone());
        }
        let (done, waiting) = watch::channel(());
        self.pending.insert(key, waiting);
        Claim::Claimed(done)
    }

    /// Ends a claim: the copy is stored (and [`insert`](Self::insert)ed) or the send failed.
    pub(crate) fn release(&mut self, id: Uuid, topic: &str) {
        self.pending.remove(&(id, topic_hash(topic)));
    }

    /// Forgets every send below `start` (removed by retention).
    pub(crate) fn prune_below(&mut self, start: u64) {
        self.by_id.retain(|_, s| s.log_position >= start);
        let by_id = &self.by_id;
        self.order.retain(|id| by_id.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_copy_wins_and_other_topics_do_not_match() {
        let mut w = SendWindow::default();
        let id = Uuid::now_v7();
        w.insert(id, "a", 1, 5, 100);
        w.insert(id, "a", 2, 9, 200);
        assert_eq!(w.get(&id, "a").map(|s| s.log_position), Some(100));
        assert_eq!(w.get(&id, "%DLQ%g"), None);
        w.prune_below(101);
        assert_eq!(w.get(&id, "a"), None);
    }

    #[test]
    fn a_claimed_id_is_pending_until_released() {
        let mut w = SendWindow::default();
        let id = Uuid::now_v7();
        let Claim::Claimed(done) = w.claim(id, "a") else {
            panic!("a fresh id is claimed");
        };
        let Claim::Pending(waiting) = w.claim(id, "a") else {
            panic!("a claimed id is pending");
        };
        assert!(matches!(w.claim(id, "b"), Claim::Claimed(_)), "per topic");
        w.insert(id, "a", 0, 3, 10);
        w.release(id, "a");
        drop(done);
        assert!(
            waiting.has_changed().is_err(),
            "the waiter sees the claim end"
        );
        assert!(matches!(w.claim(id, "a"), Claim::Stored(s) if s.queue_offset == 3));
    }
}
