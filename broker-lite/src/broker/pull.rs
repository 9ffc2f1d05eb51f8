//! Pulling: picking due redeliveries and new messages from a member's queues within the pull's
//! count and byte budget, long polling.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Broker;
use super::budget::Budget;
use super::consumer::{Delivery, PullRequest};
use super::cursor::{Cursor, Holder, Reserved, Slot};
use super::error::{BrokerError, Result};
use super::group::Subscription;
use super::message::props;
use super::receipt::Receipt;
use super::trace::TraceKind;
use crate::storage::StoredRecord;

/// How often a long poll re-checks due redeliveries while nothing else wakes it.
const RECHECK: Duration = Duration::from_millis(500);

/// Pulls run housekeeping (timeouts, evictions) at most this often, by the broker clock.
const PULL_HOUSEKEEPING_MS: u64 = 100;

/// About how many bytes one storage read returns.
const READ_BYTES: usize = 16 << 20;

/// Offsets of one queue reserved for this pull.
struct Plan {
    queue_id: u32,
    reserved: Vec<Reserved>,
}

impl Broker {
    /// Returns up to `max_messages` messages, and no more than
    /// [`max_bytes`](PullRequest::max_bytes) of them (but always at least one), from the queues
    /// assigned to the member: first those due for redelivery, then new ones. The byte bound is
    /// applied before anything is reserved (see the `budget` module source). When none is ready it waits up to `long_poll` (capped
    /// by [`max_long_poll`](super::BrokerConfig::max_long_poll)) and returns an empty list on
    /// timeout. A pull counts as a heartbeat.
    ///
    /// Every returned message is in flight until acked or nacked; after the consume timeout it is
    /// delivered again.
    ///
    /// # Errors
    /// [`BrokerError::UnknownTopic`], [`BrokerError::UnknownGroup`],
    /// [`BrokerError::UnknownMember`] (not subscribed to the topic, or evicted);
    /// [`BrokerError::Storage`] when records cannot be read.
    ///
    /// # Cancel safety
    /// Cancel safe while waiting; a pull dropped after it reserved messages leaves them in flight
    /// until the consume timeout redelivers them.
    ///
    /// # Examples
    /// ```
    /// # async fn f(broker: broker_lite::broker::Broker) -> broker_lite::broker::Result<()> {
    /// use std::time::Duration;
    /// use broker_lite::broker::PullRequest;
    /// let pull = PullRequest::new("billing", "billing-1", "orders").with_long_poll(Duration::from_secs(20));
    /// for delivery in broker.pull(pull).await? {
    ///     // handle it, then:
    ///     broker.ack(&delivery.receipt).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[tracing::instrument(level = "debug", skip_all, fields(group = %request.group, client_id = %request.client_id, topic = %request.topic))]
    pub async fn pull(&self, request: PullRequest) -> Result<Vec<Delivery>> {
        self.check_open()?;
        let max = request
            .max_messages
            .clamp(1, self.inner.config.max_pull_batch);
        let wait = request.long_poll.min(self.inner.config.max_long_poll);
        let deadline = Instant::now() + wait;
        metrics::counter!("broker_lite_pulls_total").increment(1);
        loop {
            self.check_open()?;
            // A pull is a heartbeat: refresh it before silent members are evicted.
            let _ = self.heartbeat(&request.group, &request.client_id).await;
            if let Err(e) = self.housekeeping_from_pull().await {
                // Another message's dead letter failed; this pull can still go on.
                tracing::warn!(error = %e, "housekeeping before a pull failed");
            }
            let mut progress = self.inner.store.subscribe();
            progress.borrow_and_update();
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (deliveries, progressed) = self.try_pull(&request, max).await?;
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            if progressed {
                continue; // everything reserved was filtered out: look further
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = progress.changed() => {}
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline.min(now + RECHECK)) => {}
            }
        }
    }

    /// Housekeeping before a pull, at most every [`PULL_HOUSEKEEPING_MS`] so that busy pulls do
    /// not rescan every cursor each time.
    async fn housekeeping_from_pull(&self) -> Result<()> {
        let now = self.now_ms();
        let last = self.inner.last_housekeeping_ms.load(Ordering::SeqCst);
        if now >= last && now - last < PULL_HOUSEKEEPING_MS {
            return Ok(());
        }
        self.inner.last_housekeeping_ms.store(now, Ordering::SeqCst);
        self.housekeeping().await
    }

    /// One attempt: reserve under the lock, read outside it, settle filtered ones. Returns the
    /// deliveries and whether anything was reserved.
    async fn try_pull(&self, request: &PullRequest, max: usize) -> Result<(Vec<Delivery>, bool)> {
        let (group, client, topic) = (&request.group, &request.client_id, &request.topic);
        let now = self.now_ms();
        let deadline_ms = now + self.inner.config.consume_timeout.as_millis() as u64;
        let mut budget = Budget::new(request.max_bytes, group, client, topic);
        let (plans, sub) = {
            let mut state = self.inner.state.lock().unwrap();
            let queues = *state
                .topics
                .get(topic)
                .ok_or_else(|| BrokerError::UnknownTopic(topic.clone()))?;
            let g = state
                .groups
                .get_mut(group)
                .ok_or_else(|| BrokerError::UnknownGroup(group.clone()))?;
            let member = g.members.get_mut(client);
            let Some(sub) = member
                .as_ref()
                .and_then(|m| m.subscriptions.get(topic))
                .cloned()
            else {
                return Err(BrokerError::UnknownMember {
                    group: group.clone(),
                    client_id: client.clone(),
                    topic: topic.clone(),
                });
            };
            if let Some(m) = member {
                m.last_seen_ms = now;
            }
            let mut plans = Vec::new();
            let mut left = max;
            for queue_id in g.queues_of(topic, queues, client) {
                if left == 0 || budget.exhausted() {
                    break;
                }
                let key = g.key(topic, queue_id, client);
                let cursor = g
                    .cursors
                    .entry(key)
                    .or_insert_with(|| Cursor::at(self.start_offset(topic, queue_id)));
                let to = Holder {
                    client_id: client,
                    now_ms: now,
                    deadline_ms,
                };
                let costs =
                    self.due_costs(cursor, topic, queue_id, now, left, sub.ordered, &budget);
                let mut reserved = cursor.take_due(to, costs.len(), sub.ordered);
                for cost in &costs[..reserved.len()] {
                    budget.take(*cost);
                }
                left -= reserved.len();
                if left > 0 && !budget.exhausted() {
                    let (available, costs) = self.new_costs(cursor, topic, queue_id, left, &budget);
                    let new = cursor.reserve_new(
                        available,
                        costs.len(),
                        sub.ordered,
                        self.inner.config.max_pending_per_queue,
                        to,
                    );
                    for cost in &costs[..new.len()] {
                        budget.take(*cost);
                    }
                    left -= new.len();
                    reserved.extend(new);
                }
                if !reserved.is_empty() {
                    plans.push(Plan { queue_id, reserved });
                }
            }
            (plans, sub)
        };
        if plans.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut deliveries = Vec::new();
        // Charged again with the exact sizes, now that the records are read.
        let mut exact = Budget::new(request.max_bytes, group, client, topic);
        let mut given_back: Vec<(u32, u64)> = Vec::new();
        let mut skipped: Vec<(u32, Reserved, Option<uuid::Uuid>)> = Vec::new();
        let mut failure = None;
        for plan in &plans {
            match self.read_plan(topic, plan).await {
                Ok(records) => {
                    for (r, record) in plan.reserved.iter().zip(records) {
                        match record {
                            Some(rec) if self.wanted(&sub, group, &rec) => {
                                if exact.take(exact.exact(&rec)) {
                                    deliveries.push(self.delivery(request, r, rec));
                                } else {
                                    given_back.push((plan.queue_id, r.offset));
                                }
                            }
                            Some(rec) => skipped.push((plan.queue_id, *r, Some(rec.message_id))),
                            None => {
                                tracing::warn!(
                                    group,
                                    topic,
                                    queue_id = plan.queue_id,
                                    offset = r.offset,
                                    "message removed by retention before it was consumed; skipping it"
                                );
                                skipped.push((plan.queue_id, *r, None));
                            }
                        }
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    // Give the reservations back: they are delivered again at once.
                    let mut state = self.inner.state.lock().unwrap();
                    if let Some(g) = state.groups.get_mut(group) {
                        let key = g.key(topic, plan.queue_id, client);
                        if let Some(c) = g.cursors.get_mut(&key) {
                            for r in &plan.reserved {
                                c.wait(r.offset, now, false);
                            }
                        }
                    }
                }
            }
        }
        {
            let mut state = self.inner.state.lock().unwrap();
            if let Some(g) = state.groups.get_mut(group) {
                for d in &deliveries {
                    let key = g.key(topic, d.queue_id, client);
                    if let Some(c) = g.cursors.get_mut(&key) {
                        c.set_message_id(d.queue_offset, d.message_id);
                    }
                }
                for (queue_id, r, _) in &skipped {
                    let key = g.key(topic, *queue_id, client);
                    if let Some(c) = g.cursors.get_mut(&key) {
                        c.settle_skipped(r.offset, r.attempt, client);
                    }
                }
                for (queue_id, offset) in &given_back {
                    let key = g.key(topic, *queue_id, client);
                    if let Some(c) = g.cursors.get_mut(&key) {
                        give_back(c, *offset, now);
                    }
                }
            }
        }
        if !given_back.is_empty() {
            self.inner.wake.notify_waiters();
        }
        if !skipped.is_empty() {
            self.mark_dirty();
            for (_, _, id) in skipped {
                if let Some(id) = id {
                    self.record(
                        id,
                        TraceKind::Filtered {
                            group: group.clone(),
                        },
                    );
                }
            }
        }
        if let Some(e) = failure {
            if deliveries.is_empty() {
                return Err(e);
            }
            tracing::warn!(error = %e, "a pull could read only part of its messages");
        }
        for d in &deliveries {
            self.record(
                d.message_id,
                TraceKind::Delivered {
                    group: group.clone(),
                    client_id: client.clone(),
                    attempt: d.receipt.attempt,
                },
            );
            if d.reconsume_times > 0 || d.receipt.attempt > 1 {
                metrics::counter!("broker_lite_redeliveries_total", "group" => group.clone())
                    .increment(1);
            }
        }
        metrics::counter!("broker_lite_deliveries_total", "group" => group.clone())
            .increment(deliveries.len() as u64);
        Ok((deliveries, true))
    }

    /// The estimated costs of the due redeliveries of a cursor that fit `budget`, in the order
    /// [`Cursor::take_due`] takes them: reserving `costs.len()` takes exactly these.
    #[allow(clippy::too_many_arguments)]
    fn due_costs(
        &self,
        cursor: &Cursor,
        topic: &str,
        queue_id: u32,
        now: u64,
        limit: usize,
        ordered: bool,
        budget: &Budget,
    ) -> Vec<usize> {
        let mut probe = budget.clone();
        let mut costs = Vec::new();
        for (offset, p) in &cursor.pending {
            if costs.len() >= limit {
                break;
            }
            match p.slot {
                Slot::Waiting { due_ms } if due_ms <= now => {
                    let len = self
                        .inner
                        .store
                        .record_lens(topic, queue_id, *offset, 1)
                        .first()
                        .copied()
                        .unwrap_or(0);
                    let cost = probe.estimate(len);
                    if !probe.take(cost) {
                        break;
                    }
                    costs.push(cost);
                }
                Slot::Acked => {}
                _ if ordered => break,
                _ => {}
            }
        }
        costs
    }

    /// The readable end of a queue and the estimated costs of its new messages that fit
    /// `budget`, from the cursor's next offset on (a removed one costs as an empty record: it
    /// is skipped after the read).
    fn new_costs(
        &self,
        cursor: &Cursor,
        topic: &str,
        queue_id: u32,
        limit: usize,
        budget: &Budget,
    ) -> (u64, Vec<usize>) {
        let store = &self.inner.store;
        let Some(bounds) = store.queue_bounds(topic, queue_id) else {
            return (0, Vec::new());
        };
        let end = bounds.max.min(cursor.next.saturating_add(limit as u64));
        let from = cursor.next.max(bounds.min);
        let lens = if from < end {
            store.record_lens(topic, queue_id, from, (end - from) as usize)
        } else {
            Vec::new()
        };
        let mut probe = budget.clone();
        let mut costs = Vec::new();
        for offset in cursor.next..end {
            let len = offset
                .checked_sub(from)
                .and_then(|i| lens.get(i as usize))
                .copied()
                .unwrap_or(0);
            let cost = probe.estimate(len);
            if !probe.take(cost) {
                break;
            }
            costs.push(cost);
        }
        (bounds.max, costs)
    }

    /// The records of a plan, one per reservation (`None`: no longer stored).
    async fn read_plan(&self, topic: &str, plan: &Plan) -> Result<Vec<Option<StoredRecord>>> {
        let mut found = std::collections::HashMap::with_capacity(plan.reserved.len());
        let mut i = 0;
        while i < plan.reserved.len() {
            // Read runs of consecutive offsets at once.
            let first = plan.reserved[i].offset;
            let mut n = 1;
            while i + n < plan.reserved.len() && plan.reserved[i + n].offset == first + n as u64 {
                n += 1;
            }
            let end = first + n as u64;
            let mut from = first;
            while from < end {
                let records = self
                    .inner
                    .store
                    .read_queue(
                        topic,
                        plan.queue_id,
                        from,
                        (end - from) as usize,
                        READ_BYTES,
                    )
                    .await?;
                let Some(last) = records.last() else { break };
                from = last.queue_offset + 1;
                for r in records {
                    if r.queue_offset < end {
                        found.insert(r.queue_offset, r);
                    }
                }
            }
            i += n;
        }
        Ok(plan
            .reserved
            .iter()
            .map(|r| found.remove(&r.offset))
            .collect())
    }

    /// Whether the member wants the record: tag filter, and redriven messages are for their
    /// group only.
    fn wanted(&self, sub: &Subscription, group: &str, record: &StoredRecord) -> bool {
        if let Some(target) = record.properties.get(props::TARGET_GROUP) {
            if target != group {
                return false;
            }
        }
        sub.accepts(record.tag.as_deref())
    }

    fn delivery(&self, request: &PullRequest, r: &Reserved, rec: StoredRecord) -> Delivery {
        Delivery {
            message_id: rec.message_id,
            topic: rec.topic,
            queue_id: rec.queue_id,
            queue_offset: rec.queue_offset,
            key: rec.key,
            tag: rec.tag,
            properties: rec.properties,
            body: rec.body,
            born_timestamp_ms: rec.born_timestamp_ms,
            stored_timestamp_ms: rec.stored_timestamp_ms,
            reconsume_times: r.reconsume_times,
            first_delivered_at_ms: r.first_delivered_ms,
            receipt: Receipt {
                group: request.group.clone(),
                client_id: request.client_id.clone(),
                topic: request.topic.clone(),
                queue_id: rec.queue_id,
                queue_offset: r.offset,
                attempt: r.attempt,
            },
        }
    }
}

/// Undoes the reservation of `offset` for a pull that could not carry it: due again at once,
/// with the delivery count it had before, as if it had never been taken.
fn give_back(cursor: &mut Cursor, offset: u64, now_ms: u64) {
    if let Some(p) = cursor.pending.get_mut(&offset) {
        if matches!(p.slot, Slot::InFlight { .. }) {
            p.slot = Slot::Waiting { due_ms: now_ms };
            p.attempts = p.attempts.saturating_sub(1);
        }
    }
}
