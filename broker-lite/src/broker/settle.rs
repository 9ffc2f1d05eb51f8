//! Settling deliveries: ack, nack (RECONSUME_LATER with delay levels), and the consume timeout.

use std::time::Duration;

use super::Broker;
use super::consumer::{NackOutcome, Receipt};
use super::cursor::AckResult;
use super::error::{BrokerError, Result};
use super::group::CursorKey;
use super::trace::TraceKind;

pub(crate) fn stale(receipt: &Receipt) -> BrokerError {
    BrokerError::StaleReceipt {
        topic: receipt.topic.clone(),
        queue_id: receipt.queue_id,
        queue_offset: receipt.queue_offset,
        attempt: receipt.attempt,
    }
}

impl Broker {
    /// Acks a delivery (CONSUME_SUCCESS): the message is consumed for the group (or, in
    /// broadcasting, for this member). Acking an already settled message is a no-op, and a late
    /// ack of an older delivery attempt still settles the message.
    ///
    /// # Errors
    /// [`BrokerError::UnknownGroup`]; [`BrokerError::StaleReceipt`] when the receipt names a
    /// message that was never delivered.
    #[tracing::instrument(level = "debug", skip_all, fields(group = %receipt.group, topic = %receipt.topic, queue_id = receipt.queue_id, offset = receipt.queue_offset))]
    pub async fn ack(&self, receipt: &Receipt) -> Result<()> {
        self.check_open()?;
        let (key, known_id) = {
            let mut state = self.inner.state.lock().unwrap();
            let g = state
                .groups
                .get_mut(&receipt.group)
                .ok_or_else(|| BrokerError::UnknownGroup(receipt.group.clone()))?;
            let key = g.key(&receipt.topic, receipt.queue_id, &receipt.client_id);
            let cursor = g.cursors.get_mut(&key).ok_or_else(|| stale(receipt))?;
            let known_id = cursor.message_id(receipt.queue_offset);
            match cursor.ack(receipt.queue_offset) {
                AckResult::NeverDelivered => return Err(stale(receipt)),
                AckResult::AlreadySettled => return Ok(()),
                AckResult::Acked => {}
            }
            (key, known_id)
        };
        self.mark_dirty();
        self.inner.wake.notify_waiters();
        metrics::counter!("broker_lite_acks_total", "group" => receipt.group.clone()).increment(1);
        if let Some(id) = self.id_of(known_id, &key, receipt.queue_offset).await {
            self.record(
                id,
                TraceKind::Acked {
                    group: receipt.group.clone(),
                    client_id: receipt.client_id.clone(),
                },
            );
        }
        Ok(())
    }

    /// Nacks a delivery (RECONSUME_LATER, safeguards C1, C8): the message is delivered again
    /// after `delay_level` (1-based; default: level
    /// [`first_retry_level`](super::BrokerConfig::first_retry_level) plus the reconsume count),
    /// with its reconsume count raised; once it was redelivered
    /// [`max_reconsume_times`](super::BrokerConfig::max_reconsume_times) times it goes to the
    /// group's dead-letter topic instead.
    ///
    /// # Errors
    /// [`BrokerError::UnknownGroup`]; [`BrokerError::StaleReceipt`] when this delivery is no longer
    /// the current one (it timed out and was redelivered, or was settled);
    /// [`BrokerError::Storage`] when dead lettering failed (the message is then redelivered).
    ///
    /// # Examples
    /// ```
    /// # async fn f(broker: broker_lite::broker::Broker, d: broker_lite::broker::Delivery) -> broker_lite::broker::Result<()> {
    /// use broker_lite::broker::NackOutcome;
    /// match broker.nack(&d.receipt, None).await? {
    ///     NackOutcome::Redeliver { after } => println!("retry in {after:?}"),
    ///     NackOutcome::DeadLettered => println!("moved to %DLQ%{}", d.receipt.group()),
    ///     _ => {}
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[tracing::instrument(level = "debug", skip_all, fields(group = %receipt.group, topic = %receipt.topic, queue_id = receipt.queue_id, offset = receipt.queue_offset))]
    pub async fn nack(&self, receipt: &Receipt, delay_level: Option<u8>) -> Result<NackOutcome> {
        self.check_open()?;
        let config = &self.inner.config;
        let now = self.now_ms();
        let (key, outcome, reconsume_times, known_id) = {
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
            let reconsume_times = pending.reconsume_times;
            let known_id = pending.message_id;
            if reconsume_times >= config.max_reconsume_times {
                cursor.park(receipt.queue_offset);
                (key, NackOutcome::DeadLettered, reconsume_times, known_id)
            } else {
                let level = delay_level.unwrap_or_else(|| config.level_for_retry(reconsume_times));
                let after = config.delay_for(level);
                cursor.wait(receipt.queue_offset, now + after.as_millis() as u64, true);
                (
                    key,
                    NackOutcome::Redeliver { after },
                    reconsume_times,
                    known_id,
                )
            }
        };
        self.mark_dirty();
        metrics::counter!("broker_lite_nacks_total", "group" => receipt.group.clone()).increment(1);
        let id = self.id_of(known_id, &key, receipt.queue_offset).await;
        match outcome {
            NackOutcome::Redeliver { after } => {
                if let Some(id) = id {
                    self.record(
                        id,
                        TraceKind::Nacked {
                            group: receipt.group.clone(),
                            client_id: receipt.client_id.clone(),
                            redeliver_after: after,
                        },
                    );
                }
                tracing::debug!(group = %receipt.group, topic = %receipt.topic, queue_id = receipt.queue_id,
                    offset = receipt.queue_offset, ?after, "message nacked");
            }
            _ => {
                if let Some(id) = id {
                    self.record(
                        id,
                        TraceKind::Nacked {
                            group: receipt.group.clone(),
                            client_id: receipt.client_id.clone(),
                            redeliver_after: Duration::ZERO,
                        },
                    );
                }
                self.move_to_dead_letters(
                    &receipt.group,
                    &key,
                    receipt.queue_offset,
                    reconsume_times,
                    None,
                )
                .await?;
            }
        }
        Ok(outcome)
    }

    /// Evicts silent members and turns timed-out deliveries into redeliveries (or dead letters
    /// once the reconsume limit is reached). Runs at the start of every pull and in the
    /// background every [`housekeeping_interval`](super::BrokerConfig::housekeeping_interval).
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when a dead letter cannot be written (the message stays due and
    /// is tried again).
    pub async fn run_housekeeping(&self) -> Result<()> {
        self.check_open()?;
        self.housekeeping().await
    }

    pub(crate) async fn housekeeping(&self) -> Result<()> {
        let now = self.now_ms();
        self.evict_silent_members(now);
        let max = self.inner.config.max_reconsume_times;
        let mut timed_out = Vec::new();
        let mut doomed = Vec::new();
        {
            let mut state = self.inner.state.lock().unwrap();
            for (name, g) in &mut state.groups {
                for (key, cursor) in &mut g.cursors {
                    for (offset, client_id, reconsume_times) in cursor.timed_out(now) {
                        let id = cursor.message_id(offset);
                        if reconsume_times >= max {
                            cursor.park(offset);
                            doomed.push((name.clone(), key.clone(), offset, reconsume_times));
                        } else {
                            cursor.wait(offset, now, true);
                        }
                        timed_out.push((name.clone(), key.clone(), offset, client_id, id));
                    }
                }
            }
        }
        if timed_out.is_empty() {
            return Ok(());
        }
        self.mark_dirty();
        for (group, key, offset, client_id, id) in timed_out {
            tracing::warn!(%group, topic = %key.topic, queue_id = key.queue_id, offset, %client_id,
                "consume timeout: redelivering (C3)");
            metrics::counter!("broker_lite_consume_timeouts_total", "group" => group.clone())
                .increment(1);
            if let Some(id) = self.id_of(id, &key, offset).await {
                self.record(id, TraceKind::TimedOut { group, client_id });
            }
        }
        for (group, key, offset, reconsume_times) in doomed {
            self.move_to_dead_letters(&group, &key, offset, reconsume_times, None)
                .await?;
        }
        self.inner.wake.notify_waiters();
        Ok(())
    }

    /// The id of the message at `offset` of a cursor's queue (for the trace): `known` when the
    /// cursor remembered it, else read from the log.
    pub(crate) async fn id_of(
        &self,
        known: Option<uuid::Uuid>,
        key: &CursorKey,
        offset: u64,
    ) -> Option<uuid::Uuid> {
        if known.is_some() {
            return known;
        }
        let records = self
            .inner
            .store
            .read_queue(&key.topic, key.queue_id, offset, 1, usize::MAX)
            .await
            .ok()?;
        records
            .into_iter()
            .find(|r| r.queue_offset == offset)
            .map(|r| r.message_id)
    }
}
