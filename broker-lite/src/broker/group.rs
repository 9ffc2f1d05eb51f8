//! Consumer groups: membership, heartbeats and the balancing of queues across members.
//!
//! # One tag filter per clustering group and topic
//!
//! The members of a clustering group share one cursor per queue, and the owner of a queue
//! settles the messages its tag filter skips *for the whole group*. Two members with different
//! filters would therefore lose, for the group, the messages that only the other filter wants
//! (the RocketMQ "inconsistent subscription" pitfall, typical of a rolling deploy that adds a
//! tag). So a subscription whose filter differs from the one the group's live members use for
//! that topic is refused ([`BrokerError::SubscriptionMismatch`](super::BrokerError)), naming
//! both filters; the group's filter can change once no live member uses the old one (members
//! leave when their connection closes). Filters compare as sets: `["a", "b"]` equals
//! `["b", "a"]`, and no filter equals `["*"]`. Broadcasting members each have their own cursors
//! and may filter as they like.

use std::collections::{BTreeMap, BTreeSet};

use super::consumer::MessageModel;
use super::cursor::Cursor;
use super::membership::SessionId;

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

    /// The filter as a set, `None` for every tag.
    fn filter_set(&self) -> Option<BTreeSet<&str>> {
        let tags = self.tag_filter.as_ref()?;
        if tags.iter().any(|t| t == "*") {
            return None;
        }
        Some(tags.iter().map(String::as_str).collect())
    }

    /// Whether both take the same tags.
    pub(crate) fn same_filter(&self, other: &Subscription) -> bool {
        self.filter_set() == other.filter_set()
    }
}

/// A tag filter for error messages: `* (every tag)` or `["a", "b"]`.
pub(crate) fn describe_filter(filter: Option<&[String]>) -> String {
    match filter {
        None => "* (every tag)".into(),
        Some(tags) if tags.iter().any(|t| t == "*") => "* (every tag)".into(),
        Some(tags) => format!("{tags:?}"),
    }
}

/// One live member.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    pub(crate) last_seen_ms: u64,
    /// The connection it subscribed over, if any: the member leaves when it closes.
    pub(crate) session: Option<SessionId>,
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

    /// A live member of this clustering group, other than `client_id`, that consumes `topic`
    /// with a filter other than `sub`'s: `(member, its subscription)`.
    pub(crate) fn conflicting(
        &self,
        topic: &str,
        client_id: &str,
        sub: &Subscription,
    ) -> Option<(&String, &Subscription)> {
        if self.model != MessageModel::Clustering {
            return None;
        }
        self.members
            .iter()
            .filter(|(id, _)| id.as_str() != client_id)
            .filter_map(|(id, m)| m.subscriptions.get(topic).map(|s| (id, s)))
            .find(|(_, s)| !s.same_filter(sub))
    }

    /// Removes a member that is gone for good (it left, or its connection closed) and gives
    /// every delivery in flight at it, ordered ones included, back for immediate redelivery.
    /// The caller rebalances the topics of the returned member.
    pub(crate) fn remove_member(&mut self, client_id: &str, now_ms: u64) -> Option<Member> {
        let member = self.members.remove(client_id)?;
        let mut released = 0;
        for cursor in self.cursors.values_mut() {
            released += cursor.release_client(client_id, now_ms);
        }
        if released > 0 {
            tracing::info!(
                client_id,
                released,
                "deliveries of a departed member released for redelivery"
            );
        }
        Some(member)
    }

    /// Members whose last heartbeat is older than `timeout_ms`, removed. Their unordered
    /// deliveries go to the new owners with the rebalance; ordered ones stay until settled or
    /// timed out, since a silent member may still be running them.
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
    /// members sorted by id get contiguous blocks) and sends unordered in-flight messages of
    /// moved queues back for immediate redelivery to their new owner; ordered ones stay with
    /// their holder until settled ([`Cursor::release_others`]). Returns whether an owner
    /// changed.
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

    #[test]
    fn filters_compare_as_sets() {
        let sub = |tags: Option<&[&str]>| Subscription {
            tag_filter: tags.map(|t| t.iter().map(|s| s.to_string()).collect()),
            ordered: false,
        };
        assert!(sub(None).same_filter(&sub(Some(&["*"]))));
        assert!(sub(Some(&["a", "b"])).same_filter(&sub(Some(&["b", "a", "a"]))));
        assert!(!sub(Some(&["a"])).same_filter(&sub(Some(&["a", "b"]))));
        assert!(!sub(None).same_filter(&sub(Some(&["a"]))));
        assert!(!sub(Some(&[])).same_filter(&sub(None)));
    }
}
