//! Consumer groups: membership, heartbeats and the balancing of queues across members.

use std::collections::{BTreeMap, BTreeSet};

use super::consumer::MessageModel;
use super::cursor::Cursor;

/// What a member consumes from one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) tag_filter: Option<Vec<String>>,
    pub(crate) ordered: bool,
}

impl Subscription {
    /// Whether a message with `tag` passes the filter.
    pub(crate) fn accepts(&self, tag: Option<&str>) -> bool {
        match &self.tag_filter {
            None => true,
            Some(tags) if tags.iter().any(|t| t == "*") => true,
            Some(tags) => tag.is_some_and(|tag| tags.iter().any(|t| t == tag)),
        }
    }
}

/// One live member.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    pub(crate) last_seen_ms: u64,
}

/// Which cursor: clustering groups have one per queue, broadcasting groups one per queue and
/// member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct CursorKey {
    pub(crate) topic: String,
    pub(crate) queue_id: u32,
    pub(crate) member: Option<String>,
}

/// A consumer group.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) model: MessageModel,
    pub(crate) members: BTreeMap<String, Member>,
    pub(crate) cursors: BTreeMap<CursorKey, Cursor>,
    /// Clustering: the owner of each queue of each subscribed topic.
    pub(crate) assignment: BTreeMap<String, Vec<Option<String>>>,
    /// Every topic the group ever subscribed to.
    pub(crate) topics: BTreeSet<String>,
    /// Offsets of its dead-letter queue already redriven.
    pub(crate) redriven: BTreeSet<u64>,
}

impl Group {
    pub(crate) fn new(model: MessageModel) -> Self {
        Group {
            model,
            members: BTreeMap::new(),
            cursors: BTreeMap::new(),
            assignment: BTreeMap::new(),
            topics: BTreeSet::new(),
            redriven: BTreeSet::new(),
        }
    }

    /// The cursor key of `member` on a queue.
    pub(crate) fn key(&self, topic: &str, queue_id: u32, member: &str) -> CursorKey {
        CursorKey {
            topic: topic.to_string(),
            queue_id,
            member: (self.model == MessageModel::Broadcasting).then(|| member.to_string()),
        }
    }

    /// The queues of `topic` that `member` consumes.
    pub(crate) fn queues_of(&self, topic: &str, queues: u32, member: &str) -> Vec<u32> {
        match self.model {
            MessageModel::Broadcasting => (0..queues).collect(),
            MessageModel::Clustering => self
                .assignment
                .get(topic)
                .map(|owners| {
                    owners
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| o.as_deref() == Some(member))
                        .map(|(q, _)| q as u32)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Members whose last heartbeat is older than `timeout_ms`, removed.
    pub(crate) fn evict_silent(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now_ms.saturating_sub(m.last_seen_ms) > timeout_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.members.remove(id);
        }
        gone
    }

    /// Recomputes the owners of `topic`'s queues (clustering; RocketMQ's "allocate averagely":
    /// members sorted by id get contiguous blocks) and sends in-flight messages of moved queues
    /// back for immediate redelivery to their new owner. Returns whether an owner changed.
    pub(crate) fn rebalance(&mut self, topic: &str, queues: u32, now_ms: u64) -> bool {
        if self.model != MessageModel::Clustering {
            return false;
        }
        let members: Vec<&String> = self
            .members
            .iter()
            .filter(|(_, m)| m.subscriptions.contains_key(topic))
            .map(|(id, _)| id)
            .collect();
        let owners = allocate(queues, &members);
        let changed = self.assignment.get(topic) != Some(&owners);
        if changed {
            for (q, owner) in owners.iter().enumerate() {
                let key = CursorKey {
                    topic: topic.to_string(),
                    queue_id: q as u32,
                    member: None,
                };
                if let Some(cursor) = self.cursors.get_mut(&key) {
                    cursor.release_others(owner.as_deref(), now_ms);
                }
            }
            tracing::info!(topic, ?owners, "consumer group rebalanced");
            self.assignment.insert(topic.to_string(), owners);
        }
        changed
    }
}

/// The owner of each of `queues` queues among `members` (sorted), in contiguous blocks.
pub(crate) fn allocate(queues: u32, members: &[&String]) -> Vec<Option<String>> {
    let n = members.len() as u32;
    (0..queues)
        .map(|q| {
            if n == 0 {
                return None;
            }
            // The first `queues % n` members get one queue more.
            let base = queues / n;
            let extra = queues % n;
            let split = extra * (base + 1);
            let i = if q < split {
                q / (base + 1)
            } else {
                extra + (q - split) / base.max(1)
            };
            Some(members[i.min(n - 1) as usize].clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_even_and_contiguous() {
        let (a, b, c) = ("a".to_string(), "b".to_string(), "c".to_string());
        let owners = allocate(4, &[&a, &b]);
        assert_eq!(
            owners,
            [Some(&a), Some(&a), Some(&b), Some(&b)].map(|o| o.cloned())
        );
        let owners = allocate(4, &[&a, &b, &c]);
        assert_eq!(
            owners,
            [Some(&a), Some(&a), Some(&b), Some(&c)].map(|o| o.cloned())
        );
        let owners = allocate(2, &[&a, &b, &c]);
        assert_eq!(owners, [Some(a.clone()), Some(b.clone())]);
        assert_eq!(allocate(2, &[]), [None, None]);
    }

    #[test]
    fn tag_filter() {
        let all = Subscription {
            tag_filter: None,
            ordered: false,
        };
        assert!(all.accepts(None));
        let some = Subscription {
            tag_filter: Some(vec!["a".into()]),
            ordered: false,
        };
        assert!(some.accepts(Some("a")));
        assert!(!some.accepts(Some("b")));
        assert!(!some.accepts(None));
    }
}
