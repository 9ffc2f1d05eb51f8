//! Joining, heartbeating and leaving consumer groups, and the periodic eviction of silent members.
//!
//! # How a member leaves
//!
//! - **It unsubscribes**: it is gone at once; its queues are rebalanced and every delivery in
//!   flight at it, ordered ones included, is redelivered to the new owners at once.
//! - **Its connection closes** (the process was killed, or the network cut the connection): the
//!   server knows at once, and [`Broker::close_session`] does the same as an unsubscribe for
//!   every member that subscribed over that connection ([`ConsumerSpec::with_session`]). A
//!   broadcasting member keeps its offsets, as after an eviction, and resumes when it
//!   subscribes again. A member that subscribed again over a newer connection is not touched by
//!   the close of the older one.
//! - **It falls silent** without closing (hung process, half-open connection): it is evicted
//!   after [`heartbeat_timeout`](super::BrokerConfig::heartbeat_timeout). Its unordered
//!   deliveries are redelivered to the new owners then; ordered ones stay with it until their
//!   consume timeout, since it may still be running them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::consumer::{ConsumerSpec, MessageModel};
use super::cursor::Cursor;
use super::error::{BrokerError, Result};
use super::group::{Group, Member, Subscription};
use super::topics::check_name;
use super::{Broker, ConsumeFrom};

/// One client connection (or any other session) that members subscribe over, so that they can
/// all leave at once when it ends ([`Broker::close_session`]). Unique within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// A new session id, never handed out before in this process.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SessionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// Registers `spec.client_id` as a member of `spec.group` consuming `spec.topic`, or refreshes
    /// its subscription and heartbeat. In a clustering group the topic's queues are rebalanced.
    ///
    /// # Errors
    /// [`BrokerError::InvalidName`]; [`BrokerError::UnknownTopic`] (when topics are not created
    /// automatically); [`BrokerError::ModelMismatch`] when the group uses the other model;
    /// [`BrokerError::SubscriptionMismatch`] when another live member of the clustering group
    /// consumes the topic with a different tag filter.
    ///
    /// # Examples
    /// ```
    /// # async fn f(broker: broker_lite::broker::Broker) -> broker_lite::broker::Result<()> {
    /// use broker_lite::broker::{ConsumerSpec, MessageModel};
    /// broker.subscribe(ConsumerSpec::new("billing", "billing-1", "orders")).await?;
    /// broker
    ///     .subscribe(ConsumerSpec::new("cache", "node-1", "orders").with_model(MessageModel::Broadcasting))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[tracing::instrument(level = "debug", skip_all, fields(group = %spec.group, client_id = %spec.client_id, topic = %spec.topic))]
    pub async fn subscribe(&self, spec: ConsumerSpec) -> Result<()> {
        self.check_open()?;
        check_name(&spec.group)?;
        if spec.client_id.is_empty() || spec.client_id.len() > 255 {
            return Err(BrokerError::InvalidRequest(
                "the client id must be 1 to 255 bytes long".into(),
            ));
        }
        let queues = self.ensure_topic(&spec.topic).await?;
        let now = self.now_ms();
        let mut state = self.inner.state.lock().unwrap();
        let group = state
            .groups
            .entry(spec.group.clone())
            .or_insert_with(|| Group::new(spec.model));
        if group.model != spec.model {
            return Err(BrokerError::ModelMismatch {
                group: spec.group,
                existing: group.model,
            });
        }
        if spec.model == MessageModel::Broadcasting {
            tracing::warn!(group = %spec.group, client_id = %spec.client_id,
                "broadcasting: every member applies every message, handlers must be idempotent (C5)");
        }
        let subscription = Subscription {
            tag_filter: spec.tag_filter,
            ordered: spec.ordered,
        };
        if let Some((member, existing)) =
            group.conflicting(&spec.topic, &spec.client_id, &subscription)
        {
            let e = BrokerError::SubscriptionMismatch {
                group: spec.group,
                topic: spec.topic,
                member: member.clone(),
                existing: existing.tag_filter.clone(),
                requested: subscription.tag_filter,
            };
            tracing::warn!(error = %e, "subscription refused");
            return Err(e);
        }
        let member = group
            .members
            .entry(spec.client_id.clone())
            .or_insert_with(|| Member {
                subscriptions: Default::default(),
                last_seen_ms: now,
                session: None,
            });
        member.last_seen_ms = now;
        member.session = spec.session;
        member
            .subscriptions
            .insert(spec.topic.clone(), subscription);
        group.topics.insert(spec.topic.clone());
        for q in 0..queues {
            let key = group.key(&spec.topic, q, &spec.client_id);
            group
                .cursors
                .entry(key)
                .or_insert_with(|| Cursor::at(self.start_offset(&spec.topic, q)));
        }
        if group.rebalance(&spec.topic, queues, now) {
            metrics::counter!("broker_lite_rebalances_total", "group" => spec.group.clone())
                .increment(1);
        }
        drop(state);
        tracing::debug!(group = %spec.group, client_id = %spec.client_id, topic = %spec.topic, "member subscribed");
        self.mark_dirty();
        self.inner.wake.notify_waiters();
        Ok(())
    }

    /// Refreshes a member's heartbeat (a pull does too). Members silent for longer than
    /// [`heartbeat_timeout`](super::BrokerConfig::heartbeat_timeout) are evicted.
    ///
    /// # Errors
    /// [`BrokerError::UnknownGroup`], [`BrokerError::UnknownMember`] (for instance after an
    /// eviction: subscribe again).
    pub async fn heartbeat(&self, group: &str, client_id: &str) -> Result<()> {
        self.check_open()?;
        let now = self.now_ms();
        let mut state = self.inner.state.lock().unwrap();
        let g = state
            .groups
            .get_mut(group)
            .ok_or_else(|| BrokerError::UnknownGroup(group.into()))?;
        let m = g
            .members
            .get_mut(client_id)
            .ok_or_else(|| BrokerError::UnknownMember {
                group: group.into(),
                client_id: client_id.into(),
                topic: String::new(),
            })?;
        m.last_seen_ms = now;
        Ok(())
    }

    /// Removes a member from its group. Clustering: its queues go to the other members, and its
    /// in-flight messages (ordered ones too) are redelivered to them at once; a late ack of one
    /// still settles it. Broadcasting: its own offsets are dropped (a member evicted for missed
    /// heartbeats or whose connection closed keeps them and resumes when it subscribes again).
    ///
    /// # Errors
    /// [`BrokerError::UnknownGroup`], [`BrokerError::UnknownMember`].
    pub async fn unsubscribe(&self, group: &str, client_id: &str) -> Result<()> {
        self.check_open()?;
        let now = self.now_ms();
        let mut state = self.inner.state.lock().unwrap();
        let topics = state.topics.clone();
        let g = state
            .groups
            .get_mut(group)
            .ok_or_else(|| BrokerError::UnknownGroup(group.into()))?;
        let member = g
            .remove_member(client_id, now)
            .ok_or_else(|| BrokerError::UnknownMember {
                group: group.into(),
                client_id: client_id.into(),
                topic: String::new(),
            })?;
        if g.model == MessageModel::Broadcasting {
            // Leaving on purpose ends this member's offsets; an evicted member keeps them.
            g.cursors
                .retain(|k, _| k.member.as_deref() != Some(client_id));
        }
        for topic in member.subscriptions.keys() {
            let queues = topics.get(topic).copied().unwrap_or(0);
            if g.rebalance(topic, queues, now) {
                metrics::counter!("broker_lite_rebalances_total", "group" => group.to_string())
                    .increment(1);
            }
        }
        drop(state);
        tracing::info!(group, client_id, "member left");
        self.mark_dirty();
        self.inner.wake.notify_waiters();
        Ok(())
    }

    /// Removes every member that subscribed over `session` (see [`ConsumerSpec::with_session`]),
    /// as if each had unsubscribed, except that broadcasting members keep their offsets: the
    /// connection they used closed, so nothing they hold can be settled over it any more. Their
    /// queues are rebalanced and their in-flight messages, ordered ones included, are
    /// redelivered to the other members at once, without waiting for the heartbeat or consume
    /// timeout. Returns the `(group, client_id)` of the members removed.
    ///
    /// # Errors
    /// [`BrokerError::Closed`].
    pub async fn close_session(&self, session: SessionId) -> Result<Vec<(String, String)>> {
        self.check_open()?;
        let now = self.now_ms();
        let mut state = self.inner.state.lock().unwrap();
        let topics = state.topics.clone();
        let mut gone = Vec::new();
        for (name, g) in &mut state.groups {
            let ids: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.session == Some(session))
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                let Some(member) = g.remove_member(&id, now) else {
                    continue;
                };
                for topic in member.subscriptions.keys() {
                    let queues = topics.get(topic).copied().unwrap_or(0);
                    if g.rebalance(topic, queues, now) {
                        metrics::counter!("broker_lite_rebalances_total", "group" => name.clone())
                            .increment(1);
                    }
                }
                tracing::info!(group = %name, client_id = %id, "member left: its connection closed");
                gone.push((name.clone(), id));
            }
        }
        drop(state);
        if !gone.is_empty() {
            self.mark_dirty();
            self.inner.wake.notify_waiters();
        }
        Ok(gone)
    }

    /// The session `client_id` of `group` subscribed over: `None` when it is no member (it
    /// left, or was never one), `Some(None)` when it subscribed without a session. The server
    /// uses it to let only a delivery's own member settle it.
    pub(crate) fn member_session(&self, group: &str, client_id: &str) -> Option<Option<SessionId>> {
        let state = self.inner.state.lock().unwrap();
        let member = state.groups.get(group)?.members.get(client_id)?;
        Some(member.session)
    }

    /// Whether the consumer group `group` exists.
    pub(crate) fn has_group(&self, group: &str) -> bool {
        self.inner.state.lock().unwrap().groups.contains_key(group)
    }

    /// Evicts members whose heartbeat timed out and rebalances their groups.
    pub(crate) fn evict_silent_members(&self, now: u64) {
        let timeout = self.inner.config.heartbeat_timeout.as_millis() as u64;
        let mut state = self.inner.state.lock().unwrap();
        let topics = state.topics.clone();
        let mut changed = false;
        for (name, g) in &mut state.groups {
            let gone = g.evict_silent(now, timeout);
            if gone.is_empty() {
                continue;
            }
            tracing::warn!(group = %name, members = ?gone, "evicted members after missed heartbeats");
            for topic in g.topics.clone() {
                let queues = topics.get(&topic).copied().unwrap_or(0);
                if g.rebalance(&topic, queues, now) {
                    metrics::counter!("broker_lite_rebalances_total", "group" => name.clone())
                        .increment(1);
                }
            }
            changed = true;
        }
        drop(state);
        if changed {
            self.mark_dirty();
            self.inner.wake.notify_waiters();
        }
    }

    /// Where a group starts on a queue it never consumed.
    pub(crate) fn start_offset(&self, topic: &str, queue_id: u32) -> u64 {
        let bounds = self.inner.store.queue_bounds(topic, queue_id);
        match self.inner.config.consume_from {
            ConsumeFrom::Latest => bounds.map_or(0, |b| b.max),
            _ => bounds.map_or(0, |b| b.min),
        }
    }
}
