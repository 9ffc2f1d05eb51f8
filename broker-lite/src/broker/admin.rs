//! Admin views: groups and their members, consumer lag, message lookup.

use uuid::Uuid;

use super::Broker;
use super::consumer::MessageModel;
use super::error::{BrokerError, Result};
use super::index;
use super::message::StoredMessage;

/// A consumer group.
///
/// Not the wire's `GroupInfo`: this one lists each live member with its topics, last heartbeat
/// and queues ([`MemberInfo`]); the wire carries the member ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// Group name.
    pub group: String,
    /// Clustering or broadcasting.
    pub model: MessageModel,
    /// Live members.
    pub members: Vec<MemberInfo>,
    /// Topics the group ever subscribed to.
    pub topics: Vec<String>,
}

/// A live member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// Member id.
    pub client_id: String,
    /// Topics it subscribes to.
    pub topics: Vec<String>,
    /// Its last heartbeat (or pull), ms since the Unix epoch.
    pub last_heartbeat_ms: u64,
    /// The (topic, queue) pairs it consumes.
    pub queues: Vec<(String, u32)>,
}

/// One page of a dead-letter listing or key lookup, with the cursor of the next: the wire
/// type, one definition for the broker and its clients.
pub use broker_lite_client::protocol::MessagePage;

/// The bytes left for one page's messages. The first message always fits, so that paging
/// always moves on.
pub(crate) struct PageBudget {
    left: usize,
    empty: bool,
}

impl PageBudget {
    pub(crate) fn new(max_bytes: usize) -> Self {
        PageBudget {
            left: max_bytes.saturating_sub(MessagePage::EMPTY_LEN),
            empty: true,
        }
    }

    /// Counts `record`'s answer size when it fits.
    pub(crate) fn take(&mut self, record: &crate::storage::StoredRecord) -> bool {
        self.take_len(StoredMessage::from(record.clone()).wire_len())
    }

    /// Counts `message`'s answer size when it fits.
    pub(crate) fn take_view(&mut self, message: &StoredMessage) -> bool {
        self.take_len(message.wire_len())
    }

    fn take_len(&mut self, len: usize) -> bool {
        if len > self.left && !self.empty {
            return false;
        }
        self.left = self.left.saturating_sub(len);
        self.empty = false;
        true
    }
}

/// How far a group (or, in broadcasting, one member) is behind on one queue (safeguard L5): the
/// wire type, one definition for the broker and its clients.
pub use broker_lite_client::protocol::QueueLag;

impl Broker {
    /// Every consumer group with its live members.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let state = self.inner.state.lock().unwrap();
        state
            .groups
            .iter()
            .map(|(name, g)| GroupInfo {
                group: name.clone(),
                model: g.model,
                members: g
                    .members
                    .iter()
                    .map(|(id, m)| MemberInfo {
                        client_id: id.clone(),
                        topics: m.subscriptions.keys().cloned().collect(),
                        last_heartbeat_ms: m.last_seen_ms,
                        queues: m
                            .subscriptions
                            .keys()
                            .flat_map(|t| {
                                let queues = state.topics.get(t).copied().unwrap_or(0);
                                g.queues_of(t, queues, id)
                                    .into_iter()
                                    .map(move |q| (t.clone(), q))
                            })
                            .collect(),
                    })
                    .collect(),
                topics: g.topics.iter().cloned().collect(),
            })
            .collect()
    }

    /// The lag of `group` on every queue it consumed, sorted by topic and queue; also exported
    /// as the gauge `broker_lite_consumer_lag{group,topic,queue}` (plus `member` for
    /// broadcasting groups).
    ///
    /// # Errors
    /// [`BrokerError::UnknownGroup`].
    pub fn lag(&self, group: &str) -> Result<Vec<QueueLag>> {
        let state = self.inner.state.lock().unwrap();
        let g = state
            .groups
            .get(group)
            .ok_or_else(|| BrokerError::UnknownGroup(group.into()))?;
        let lags: Vec<QueueLag> = g
            .cursors
            .iter()
            .map(|(k, c)| {
                let committed = c.committed();
                let max = self
                    .inner
                    .store
                    .queue_bounds(&k.topic, k.queue_id)
                    .map_or(0, |b| b.max)
                    .max(committed);
                QueueLag {
                    topic: k.topic.clone(),
                    queue_id: k.queue_id,
                    consumer_id: k.member.clone(),
                    committed,
                    max,
                    lag: max - committed,
                    unsettled: c.unsettled() as u64,
                }
            })
            .collect();
        for l in &lags {
            let gauge = match &l.consumer_id {
                None => metrics::gauge!("broker_lite_consumer_lag", "group" => group.to_string(),
                    "topic" => l.topic.clone(), "queue" => l.queue_id.to_string()),
                Some(member) => metrics::gauge!("broker_lite_consumer_lag",
                    "group" => group.to_string(), "topic" => l.topic.clone(),
                    "queue" => l.queue_id.to_string(), "member" => member.clone()),
            };
            gauge.set(l.lag as f64);
        }
        Ok(lags)
    }

    /// The message with id `id`, from the store's on-disk id index; `None`
    /// when unknown or removed by retention. A dead-lettered or re-driven copy keeps the id; the
    /// original is returned.
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when the record cannot be read.
    pub async fn lookup(&self, id: Uuid) -> Result<Option<StoredMessage>> {
        Ok(self.inner.store.find_by_id(id).await?.map(Into::into))
    }

    /// One page of the messages of `topic` with `key`, newest first: at most `limit` and at
    /// most `max_bytes` bytes of answer, on the terms of
    /// [`dead_letters_page`](Self::dead_letters_page). `cursor` is the previous page's
    /// [`next`](MessagePage::next), `None` for the first page.
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when a record cannot be read.
    ///
    /// # Examples
    /// ```
    /// # async fn f(broker: broker_lite::broker::Broker) -> broker_lite::broker::Result<()> {
    /// let page = broker.lookup_by_key_page("orders", "customer-7", 10, None, 1 << 20).await?;
    /// assert!(page.messages.len() <= 10);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn lookup_by_key_page(
        &self,
        topic: &str,
        key: &str,
        limit: usize,
        cursor: Option<u64>,
        max_bytes: usize,
    ) -> Result<MessagePage> {
        // Newest first; the cursor is the log position of the last one returned. One more than
        // the page may hold tells whether another page follows.
        let limit = limit.min(index::MAX_PER_KEY);
        let records = self
            .inner
            .store
            .find_by_key_before(topic, key, limit.saturating_add(1), cursor)
            .await?;
        let mut budget = PageBudget::new(max_bytes);
        let mut page = MessagePage::default();
        let mut more = false;
        for r in records {
            if page.messages.len() == limit {
                more = true;
                break;
            }
            let position = r.log_position;
            let m = StoredMessage::from(r);
            if !budget.take_view(&m) {
                more = true;
                break;
            }
            page.messages.push(m);
            page.next = Some(position);
        }
        if !more {
            page.next = None;
        }
        Ok(page)
    }

    /// The newest messages of `topic` with `key`, newest first, at most `limit`.
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when a record cannot be read.
    pub async fn lookup_by_key(
        &self,
        topic: &str,
        key: &str,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let limit = limit.min(index::MAX_PER_KEY);
        let records = self.inner.store.find_by_key(topic, key, limit).await?;
        Ok(records.into_iter().map(Into::into).collect())
    }
}
