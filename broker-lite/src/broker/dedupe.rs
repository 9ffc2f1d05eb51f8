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
//! The window is rebuilt from the log when the broker opens, so it survives a restart and a
//! failover (the new leader holds the replicated log). Broker-made copies (dead letters, re-driven
//! messages) keep the original id but go to other topics, and are not in the window.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

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

/// The newest [`WINDOW`] sends by message id.
#[derive(Debug, Default)]
pub(crate) struct SendWindow {
    by_id: HashMap<Uuid, Sent>,
    order: VecDeque<Uuid>,
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
}
