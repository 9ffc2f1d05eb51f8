//! Dead letters (safeguard C8): messages redelivered `max_reconsume_times` times move to the
//! group's dead-letter topic `%DLQ%<group>` (one queue), where they can be listed and re-driven
//! (see the `redrive` module); a consumer can also dead-letter a delivery at once
//! ([`Broker::dead_letter`]).
//!
//! # A move is a copy, then an ack (issue 12, item 6)
//!
//! Moving a message is two steps that cannot be one write: append a copy to `%DLQ%<group>`,
//! then settle the original for the group. The original is settled only once the copy is
//! **fsynced**, under either flush mode ([`Broker::append_durable`]): under `SYNC_FLUSH` an
//! append answered `FlushDiskTimeout` is not known durable, and under `ASYNC_FLUSH` the copy sits
//! in the page cache while the ack can reach the disk first with the next offsets checkpoint; a
//! power cut then lost a message that was durable before it was dead-lettered. Dead letters are
//! rare, so the extra fsync costs nothing that matters. When the append or the fsync fails (or
//! the fsync takes longer than `sync_flush_timeout`), the original becomes due again and is
//! redelivered; the copy may still reach the disk, so a dead letter can be duplicated, never
//! lost.

use uuid::Uuid;

use super::Broker;
use super::admin::{MessagePage, PageBudget};
use super::consumer::Receipt;
use super::error::{BrokerError, Result};
use super::group::CursorKey;
use super::message::{StoredMessage, props};
use super::settle::stale;
use super::topics::dlq_topic;
use super::trace::TraceKind;
use crate::storage::{NewRecord, StorageError, StoredRecord};

/// Most dead letters looked at by one listing or re-drive.
const SCAN_LIMIT: usize = 100_000;

impl Broker {
    /// Dead-letters a delivery at once (the consumer's permanent failure, safeguard C8): the
    /// message moves to the group's dead-letter topic `%DLQ%<group>` exactly as after
    /// [`max_reconsume_times`](super::BrokerConfig::max_reconsume_times) redeliveries, without
    /// waiting for them, and is settled for the group. `reason` is kept with the dead letter in
    /// the property `%DEAD_LETTER_REASON%` and in the trace ([`TraceKind::Rejected`], then
    /// [`TraceKind::DeadLettered`]).
    ///
    /// # Errors
    /// [`BrokerError::UnknownGroup`]; [`BrokerError::StaleReceipt`] when this delivery is no longer
    /// the current one (it timed out and was redelivered, or was settled);
    /// [`BrokerError::Storage`] when the dead letter could not be written (the message is then
    /// redelivered, nothing is lost).
    ///
    /// # Examples
    /// ```
    /// # async fn f(broker: broker_lite::broker::Broker, d: broker_lite::broker::Delivery) -> broker_lite::broker::Result<()> {
    /// // The body can never be handled: do not retry it 16 times.
    /// broker.dead_letter(&d.receipt, Some("not valid JSON".into())).await?;
    /// let dead = broker.dead_letters(d.receipt.group(), 10).await?;
    /// assert_eq!(dead[0].properties["%DEAD_LETTER_REASON%"], "not valid JSON");
    /// # Ok(())
    /// # }
    /// ```
    #[tracing::instrument(level = "debug", skip_all, fields(group = %receipt.group, topic = %receipt.topic, queue_id = receipt.queue_id, offset = receipt.queue_offset))]
    pub async fn dead_letter(&self, receipt: &Receipt, reason: Option<String>) -> Result<()> {
        self.check_open()?;
        let (key, reconsume_times, known_id) = {
            let mut state = self.inner.state.lock().unwrap();
            let g = state
                .groups
                .get_mut(&receipt.group)
                .ok_or_else(|| BrokerError::UnknownGroup(receipt.group.clone()))?;
            let key = g.key(&receipt.topic, receipt.queue_id, &receipt.client_id);
            let cursor = g.cursors.get_mut(&key).ok_or_else(|| stale(receipt))?;
            let pending = cursor
                .current(receipt.queue_offset, receipt.attempt, &receipt.client_id)
                .ok_or_else(|| stale(receipt))?;
            let found = (pending.reconsume_times, pending.message_id);
            cursor.park(receipt.queue_offset);
            (key, found.0, found.1)
        };
        self.mark_dirty();
        if let Some(id) = self.id_of(known_id, &key, receipt.queue_offset).await {
            self.record(
                id,
                TraceKind::Rejected {
                    group: receipt.group.clone(),
                    client_id: receipt.client_id.clone(),
                    reason: reason.clone(),
                },
            );
        }
        self.move_to_dead_letters(
            &receipt.group,
            &key,
            receipt.queue_offset,
            reconsume_times,
            reason.as_deref(),
        )
        .await
    }

    /// Moves the parked message at `offset` of a cursor's queue to `%DLQ%<group>`, then settles
    /// it. On failure the message becomes due again.
    pub(crate) async fn move_to_dead_letters(
        &self,
        group: &str,
        key: &CursorKey,
        offset: u64,
        reconsume_times: u32,
        reason: Option<&str>,
    ) -> Result<()> {
        let result = self
            .write_dead_letter(group, key, offset, reconsume_times, reason)
            .await;
        let now = self.now_ms();
        {
            let mut state = self.inner.state.lock().unwrap();
            if let Some(c) = state
                .groups
                .get_mut(group)
                .and_then(|g| g.cursors.get_mut(key))
            {
                match &result {
                    Ok(_) => {
                        c.ack(offset);
                    }
                    Err(_) => c.wait(offset, now, false),
                }
            }
        }
        self.mark_dirty();
        self.inner.wake.notify_waiters();
        match result {
            Ok(Some(id)) => {
                metrics::counter!("broker_lite_dead_letters_total", "group" => group.to_string())
                    .increment(1);
                tracing::warn!(group, topic = %key.topic, queue_id = key.queue_id, offset, %id,
                    reconsume_times, "message moved to the dead-letter topic (C8)");
                self.record(
                    id,
                    TraceKind::DeadLettered {
                        group: group.to_string(),
                    },
                );
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!(group, error = %e, "could not write a dead letter; it will be redelivered");
                Err(e)
            }
        }
    }

    async fn write_dead_letter(
        &self,
        group: &str,
        key: &CursorKey,
        offset: u64,
        reconsume_times: u32,
        reason: Option<&str>,
    ) -> Result<Option<Uuid>> {
        let records = self
            .inner
            .store
            .read_queue(&key.topic, key.queue_id, offset, 1, usize::MAX)
            .await?;
        let Some(r) = records.into_iter().find(|r| r.queue_offset == offset) else {
            tracing::warn!(group, topic = %key.topic, offset, "message to dead-letter was removed by retention");
            return Ok(None);
        };
        let dlq = dlq_topic(group);
        self.create_topic_unchecked(&dlq, 1).await?;
        let mut record = NewRecord::new(dlq, 0, r.body);
        record.message_id = r.message_id;
        record.key = r.key;
        record.tag = r.tag;
        record.born_timestamp_ms = r.born_timestamp_ms;
        record.properties = r.properties;
        record.properties.remove(props::TARGET_GROUP);
        record
            .properties
            .insert(props::ORIGIN_TOPIC.into(), r.topic.clone());
        record
            .properties
            .insert(props::ORIGIN_QUEUE.into(), r.queue_id.to_string());
        record
            .properties
            .insert(props::ORIGIN_OFFSET.into(), offset.to_string());
        record
            .properties
            .insert(props::RECONSUME_TIMES.into(), reconsume_times.to_string());
        if let Some(reason) = reason {
            record
                .properties
                .insert(props::DEAD_LETTER_REASON.into(), reason.to_string());
        }
        self.append_durable(vec![record]).await?;
        Ok(Some(r.message_id))
    }

    /// Appends records and returns once they are fsynced, whatever the flush mode: for copies
    /// whose original is settled afterwards (dead letters, re-drives), where "written" is not
    /// enough (see the [module docs](self)).
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when the append or the fsync fails, and
    /// [`StorageError::WriteTimeout`] when the fsync does not finish within `sync_flush_timeout`:
    /// the records may or may not become durable.
    pub(crate) async fn append_durable(&self, records: Vec<NewRecord>) -> Result<()> {
        self.append(records).await?;
        // Every appended record is written by now. When nothing written is unsynced (sync flush,
        // no later writer), they are durable; otherwise fsync them.
        let progress = self.inner.store.progress();
        if progress.flushed >= progress.written {
            return Ok(());
        }
        let limit = self.inner.config.store.sync_flush_timeout;
        match tokio::time::timeout(limit, self.inner.store.flush()).await {
            Ok(flushed) => flushed.map(drop).map_err(Into::into),
            Err(_) => Err(StorageError::WriteTimeout.into()),
        }
    }

    /// Dead letters of `group` not yet re-driven, oldest first, at most `limit`. Each carries its
    /// origin in the properties `%ORIGIN_TOPIC%`, `%ORIGIN_QUEUE%`, `%ORIGIN_OFFSET%` and
    /// `%RECONSUME_TIMES%`.
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when the dead-letter topic cannot be read.
    pub async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<StoredMessage>> {
        self.check_open()?;
        Ok(self
            .pending_dead_letters(group, limit)
            .await?
            .into_iter()
            .map(StoredMessage::from)
            .collect())
    }

    /// One page of the dead letters of `group` not yet re-driven, oldest first: at most `limit`
    /// messages and at most `max_bytes` bytes of answer ([`MessagePage::EMPTY_LEN`] plus each
    /// message's [`wire_len`](StoredMessage::wire_len)), except that a first message larger than
    /// `max_bytes` is returned alone so that a listing always moves on. `cursor` is the
    /// previous page's [`next`](MessagePage::next) (`None` for the first page); `next` is
    /// `None` once the dead-letter topic is read to its end.
    ///
    /// # Errors
    /// [`BrokerError::UnknownGroup`]; [`BrokerError::Storage`] when the dead-letter topic cannot
    /// be read.
    ///
    /// # Examples
    /// ```
    /// # async fn f(broker: broker_lite::broker::Broker) -> broker_lite::broker::Result<()> {
    /// let mut cursor = None;
    /// loop {
    ///     let page = broker.dead_letters_page("billing", 100, cursor, 1 << 20).await?;
    ///     println!("{} dead letters", page.messages.len());
    ///     match page.next {
    ///         Some(next) => cursor = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dead_letters_page(
        &self,
        group: &str,
        limit: usize,
        cursor: Option<u64>,
        max_bytes: usize,
    ) -> Result<MessagePage> {
        self.check_open()?;
        let mut budget = PageBudget::new(max_bytes);
        let (records, next) = self
            .scan_dead_letters(group, limit, cursor, |r| budget.take(r))
            .await?;
        Ok(MessagePage {
            messages: records.into_iter().map(StoredMessage::from).collect(),
            next,
        })
    }

    /// Dead letters of `group` not yet re-driven, oldest first, at most `limit`, scanning at most
    /// [`SCAN_LIMIT`] of them.
    async fn pending_dead_letters(&self, group: &str, limit: usize) -> Result<Vec<StoredRecord>> {
        Ok(self
            .scan_dead_letters(group, limit, None, |_| true)
            .await?
            .0)
    }

    /// Dead letters of `group` not yet re-driven from the dead-letter offset `from` (or the
    /// start), oldest first, until `limit` of them, one that `fits` refuses, [`SCAN_LIMIT`]
    /// scanned, or the end; with the offset to resume from, `None` at the end.
    async fn scan_dead_letters(
        &self,
        group: &str,
        limit: usize,
        from: Option<u64>,
        mut fits: impl FnMut(&StoredRecord) -> bool,
    ) -> Result<(Vec<StoredRecord>, Option<u64>)> {
        let dlq = dlq_topic(group);
        let redriven = match self.inner.state.lock().unwrap().groups.get(group) {
            Some(g) => g.redriven.clone(),
            None => return Err(BrokerError::UnknownGroup(group.into())),
        };
        let Some(bounds) = self.inner.store.queue_bounds(&dlq, 0) else {
            return Ok((Vec::new(), None));
        };
        // Forget re-driven offsets that retention removed.
        if let Some(g) = self.inner.state.lock().unwrap().groups.get_mut(group) {
            g.redriven = g.redriven.split_off(&bounds.min);
        }
        let mut out = Vec::new();
        let mut from = from.unwrap_or(bounds.min).max(bounds.min);
        let mut scanned = 0;
        'scan: while from < bounds.max && out.len() < limit && scanned < SCAN_LIMIT {
            let records = self
                .inner
                .store
                .read_queue(&dlq, 0, from, 1024, 16 << 20)
                .await?;
            if records.is_empty() {
                break;
            }
            for r in records {
                scanned += 1;
                if redriven.contains(&r.queue_offset) {
                    from = r.queue_offset + 1;
                    continue;
                }
                if out.len() == limit || !fits(&r) {
                    from = r.queue_offset;
                    break 'scan;
                }
                from = r.queue_offset + 1;
                out.push(r);
            }
        }
        let next = (from < bounds.max).then_some(from);
        Ok((out, next))
    }
}
