//! Producing: queue selection, validation, one group commit per batch, status mapping (P1).

use std::sync::atomic::Ordering;

use super::Broker;
use super::config::Replication;
use super::dedupe::Sent;
use super::error::{BrokerError, Result};
use super::message::{SendRequest, SendResult, SendStatus};
use super::trace::TraceKind;
use crate::storage::{FlushOutcome, NewRecord};
use uuid::Uuid;

/// The queue of a key: CRC32C of the key modulo the queue count, stable across restarts and
/// versions, so one key always lands in one queue (and stays in order).
pub(crate) fn queue_for_key(key: &str, queues: u32) -> u32 {
    crc32c::crc32c(key.as_bytes()) % queues.max(1)
}

/// The send status of a store outcome under `replication`, before any wait for replicas (see
/// [`Leader`](crate::replication::Leader)).
pub(crate) fn status_of(outcome: FlushOutcome, replication: Replication) -> SendStatus {
    match replication {
        Replication::None
        | Replication::SyncMaster { .. }
        | Replication::AsyncMaster
        | Replication::Follower => match outcome {
            FlushOutcome::FlushDiskTimeout => SendStatus::FlushDiskTimeout,
            _ => SendStatus::SendOk,
        },
    }
}

impl Broker {
    /// Sends one message and waits until it is stored as durably as configured (safeguard P1).
    ///
    /// The queue is `request.queue_id`, or chosen by the key's hash (one key, one queue, in
    /// order), or round robin without a key. An unknown topic is created with
    /// [`BrokerConfig::default_queues`](super::BrokerConfig::default_queues) queues when
    /// `auto_create_topics` is on.
    ///
    /// # Errors
    /// [`BrokerError::UnknownTopic`], [`BrokerError::UnknownQueue`],
    /// [`BrokerError::MessageTooLarge`], [`BrokerError::InvalidRequest`] before anything is
    /// stored; [`BrokerError::Storage`] when the store failed: the message is then *not*
    /// acknowledged (never `SendOk` after a failed write or fsync).
    ///
    /// # Cancel safety
    /// Not cancel safe: once handed to the store the message is written even if the future is
    /// dropped.
    ///
    /// # Examples
    /// ```
    /// # async fn f(broker: broker_lite::broker::Broker) -> broker_lite::broker::Result<()> {
    /// use broker_lite::broker::{SendRequest, SendStatus};
    /// let result = broker.send(SendRequest::new("orders", "hello").with_key("order-1")).await?;
    /// if result.status != SendStatus::SendOk {
    ///     // not known durable: retry (a duplicate is possible) or report
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, request: SendRequest) -> Result<SendResult> {
        let mut out = self.send_batch(vec![request]).await?;
        Ok(out.pop().expect("one result per request"))
    }

    /// Sends messages in one group commit (one fsync under sync flush); results in request
    /// order. Every message is validated before any is handed to the store: an invalid one fails
    /// the whole batch and nothing is stored (topics auto-created meanwhile stay).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    #[tracing::instrument(level = "debug", skip_all, fields(messages = requests.len()))]
    pub async fn send_batch(&self, requests: Vec<SendRequest>) -> Result<Vec<SendResult>> {
        self.check_open()?;
        let now = self.now_ms();
        let mut records = Vec::with_capacity(requests.len());
        // Sends whose id is already stored (retries, relay restarts): answered from the first
        // copy, not stored again (see the `dedupe` module).
        let mut duplicates = Vec::new();
        for (i, r) in requests.into_iter().enumerate() {
            let stored = self
                .inner
                .index
                .lock()
                .unwrap()
                .sent
                .get(&r.message_id, &r.topic);
            if let Some(sent) = stored {
                duplicates.push((i, r.message_id, r.topic, sent));
                continue;
            }
            let limit = self.inner.config.max_message_size;
            if r.body.len() > limit {
                return Err(BrokerError::MessageTooLarge {
                    size: r.body.len(),
                    limit,
                });
            }
            if let Some(name) = r.properties.keys().find(|k| k.starts_with('%')) {
                return Err(BrokerError::InvalidRequest(format!(
                    "property {name:?}: names starting with '%' are reserved for the broker"
                )));
            }
            let queues = self.ensure_topic(&r.topic).await?;
            let queue_id = match (r.queue_id, &r.key) {
                (Some(q), _) if q >= queues => {
                    return Err(BrokerError::UnknownQueue {
                        topic: r.topic,
                        queue_id: q,
                        queues,
                    });
                }
                (Some(q), _) => q,
                (None, Some(key)) => queue_for_key(key, queues),
                (None, None) => self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % queues,
            };
            let mut record = NewRecord::new(r.topic, queue_id, r.body);
            record.message_id = r.message_id;
            record.key = r.key;
            record.tag = r.tag;
            record.properties = r.properties;
            record.born_timestamp_ms = if r.born_timestamp_ms == 0 {
                now
            } else {
                r.born_timestamp_ms
            };
            records.push(record);
        }
        if duplicates.is_empty() {
            return self.append(records).await;
        }
        let mut fresh = if records.is_empty() {
            Vec::new()
        } else {
            self.append(records).await?
        }
        .into_iter();
        let mut out = Vec::with_capacity(fresh.len() + duplicates.len());
        let mut duplicates = duplicates.into_iter().peekable();
        while out.len() < out.capacity() {
            match duplicates.next_if(|(i, ..)| *i == out.len()) {
                Some((_, message_id, topic, sent)) => {
                    out.push(self.answer_duplicate(message_id, topic, sent).await);
                }
                None => out.push(fresh.next().expect("one result per stored record")),
            }
        }
        Ok(out)
    }

    /// The answer to a send whose message id is already stored: the first copy's place and its
    /// status now (under `SYNC_MASTER`, waiting for its replicas as a new send would).
    async fn answer_duplicate(&self, message_id: Uuid, topic: String, sent: Sent) -> SendResult {
        metrics::counter!("broker_lite_sends_deduplicated_total").increment(1);
        let status = if self.inner.store.replicable_position() <= sent.log_position {
            // Stored but not yet durable here (a FLUSH_DISK_TIMEOUT copy).
            SendStatus::FlushDiskTimeout
        } else if let Some(leader) = &self.inner.leader {
            leader.replicated(sent.log_position).await
        } else {
            SendStatus::SendOk
        };
        tracing::debug!(%message_id, topic, ?status, "duplicate send answered from the stored copy");
        SendResult {
            status,
            message_id,
            topic,
            queue_id: sent.queue_id,
            queue_offset: sent.queue_offset,
            duplicate: true,
        }
    }

    /// Appends records (already validated) and indexes and traces them.
    pub(crate) async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<SendResult>> {
        if let Some(leader) = &self.inner.leader {
            leader.check_writable()?;
        }
        let heads: Vec<_> = records
            .iter()
            .map(|r| (r.message_id, r.topic.clone(), r.queue_id))
            .collect();
        let appended = match self.inner.store.append_batch(records).await {
            Ok(a) => a,
            Err(e) => {
                metrics::counter!("broker_lite_send_errors_total").increment(heads.len() as u64);
                tracing::warn!(error = %e, messages = heads.len(), "send failed in storage");
                return Err(e.into());
            }
        };
        // SYNC_MASTER: wait for the replicas of the whole batch (records are placed in order).
        let replicated = match (&self.inner.leader, appended.last()) {
            (Some(leader), Some(last)) => leader.replicated(last.log_position).await,
            _ => SendStatus::SendOk,
        };
        let now = self.now_ms();
        let mut results = Vec::with_capacity(heads.len());
        let mut index = self.inner.index.lock().unwrap();
        let mut trace = self.inner.trace.lock().unwrap();
        for ((message_id, topic, queue_id), a) in heads.into_iter().zip(appended) {
            let mut status = status_of(a.outcome, self.inner.config.replication);
            if status.is_ok() {
                status = replicated;
            }
            metrics::counter!("broker_lite_sends_total", "status" => format!("{status:?}"))
                .increment(1);
            if !topic.starts_with('%') {
                index
                    .sent
                    .insert(message_id, &topic, queue_id, a.queue_offset, a.log_position);
            }
            trace.record(
                message_id,
                now,
                TraceKind::Stored {
                    topic: topic.clone(),
                    queue_id,
                    queue_offset: a.queue_offset,
                    status,
                },
            );
            if status.is_ok() {
                tracing::debug!(%message_id, topic, queue_id, queue_offset = a.queue_offset, "message stored");
            } else {
                tracing::warn!(%message_id, topic, queue_id, queue_offset = a.queue_offset, ?status,
                    "message stored but not known durable (P1): the producer must not treat it as sent");
            }
            results.push(SendResult {
                status,
                message_id,
                topic,
                queue_id,
                queue_offset: a.queue_offset,
                duplicate: false,
            });
        }
        drop((index, trace));
        self.inner.wake.notify_waiters();
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_stable() {
        assert_eq!(queue_for_key("order-42", 4), queue_for_key("order-42", 4));
        assert!(queue_for_key("x", 4) < 4);
        assert_eq!(
            status_of(FlushOutcome::InMemory, Replication::None),
            SendStatus::SendOk
        );
        assert_eq!(
            status_of(FlushOutcome::FlushDiskTimeout, Replication::None),
            SendStatus::FlushDiskTimeout
        );
    }
}
