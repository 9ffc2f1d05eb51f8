//! Producing: queue selection, validation, one group commit per batch, status mapping (P1).

use std::sync::atomic::Ordering;

use super::Broker;
use super::config::Replication;
use super::dedupe::{Claim, SendWindow, Sent};
use super::error::{BrokerError, Result};
use super::message::{SendRequest, SendResult, SendStatus};
use super::trace::TraceKind;
use crate::storage::{FlushOutcome, NewRecord};
use std::collections::HashMap;
use tokio::sync::watch;
use uuid::Uuid;

/// Where the answer to one request of a batch comes from.
enum Slot {
    /// The `k`-th record this batch stored.
    Fresh(usize),
    /// A copy stored before.
    Stored(Sent),
    /// The same id earlier in this batch, at this request index.
    Again(usize),
    /// Another send is storing this id right now.
    Waiting(watch::Receiver<()>),
}

/// The ids one send claimed in the send window, released together (one lock for the whole
/// batch) once their records are in the window, or on drop when the send failed or was
/// cancelled; either wakes the sends waiting on them.
struct Claims {
    broker: Broker,
    ids: Vec<(Uuid, String)>,
    done: Vec<watch::Sender<()>>,
}

impl Claims {
    fn new(broker: &Broker) -> Self {
        Claims {
            broker: broker.clone(),
            ids: Vec::new(),
            done: Vec::new(),
        }
    }

    fn push(&mut self, message_id: Uuid, topic: &str, done: watch::Sender<()>) {
        self.ids.push((message_id, topic.to_owned()));
        self.done.push(done);
    }

    /// Ends the claims in `window`, whose lock the caller holds; the waiters wake when `self`
    /// drops.
    fn release_in(&mut self, window: &mut SendWindow) {
        for (message_id, topic) in self.ids.drain(..) {
            window.release(message_id, &topic);
        }
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        // Removed before the senders drop (after this body): a woken waiter finds the id stored
        // or free, never still claimed.
        if self.ids.is_empty() {
            return;
        }
        let broker = self.broker.clone();
        if let Ok(mut index) = broker.inner.index.lock() {
            self.release_in(&mut index.sent);
        }
    }
}

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
        for r in &requests {
            self.validate(r)?;
        }
        // Each id is claimed before its record goes to the store, so that a second send of it
        // (a retry, a relay restart, the same id twice in this batch) is answered from the first
        // copy instead of stored again (see the `dedupe` module).
        let mut slots = Vec::with_capacity(requests.len());
        let mut to_store = Vec::new();
        let mut claims = Claims::new(self);
        {
            // One lock for the batch's claims: the prepare below awaits, so it runs after.
            let mut index = self.inner.index.lock().unwrap();
            let mut first_in_batch: HashMap<(Uuid, &str), usize> = HashMap::new();
            for (i, r) in requests.iter().enumerate() {
                if let Some(&first) = first_in_batch.get(&(r.message_id, r.topic.as_str())) {
                    slots.push(Slot::Again(first));
                    continue;
                }
                match index.sent.claim(r.message_id, &r.topic) {
                    Claim::Stored(sent) => slots.push(Slot::Stored(sent)),
                    // Waited for only once this batch's own claims are settled: two batches that
                    // each wait for an id the other claimed would wait forever.
                    Claim::Pending(waiting) => slots.push(Slot::Waiting(waiting)),
                    Claim::Claimed(done) => {
                        claims.push(r.message_id, &r.topic, done);
                        first_in_batch.insert((r.message_id, r.topic.as_str()), i);
                        slots.push(Slot::Fresh(to_store.len()));
                        to_store.push(i);
                    }
                }
            }
        }
        let mut requests: Vec<Option<SendRequest>> = requests.into_iter().map(Some).collect();
        let mut records = Vec::with_capacity(to_store.len());
        for i in to_store {
            let r = requests[i].take().expect("each request is stored once");
            records.push(self.prepare(r, now).await?);
        }
        let fresh = if records.is_empty() {
            drop(claims);
            Vec::new()
        } else {
            self.append_claimed(records, claims).await?
        };
        let mut out: Vec<SendResult> = Vec::with_capacity(slots.len());
        for slot in slots {
            let result = match slot {
                Slot::Fresh(k) => fresh[k].clone(),
                Slot::Stored(sent) => {
                    let r = requests[out.len()].take().expect("answered once");
                    self.answer_duplicate(r.message_id, r.topic, sent).await
                }
                Slot::Again(first) => {
                    metrics::counter!("broker_lite_sends_deduplicated_total").increment(1);
                    SendResult {
                        duplicate: true,
                        ..out[first].clone()
                    }
                }
                Slot::Waiting(waiting) => {
                    let r = requests[out.len()].take().expect("answered once");
                    self.send_after_claim(r, waiting, now).await?
                }
            };
            out.push(result);
        }
        Ok(out)
    }

    /// Claims `id` in `topic` in the send window (see the `dedupe` module).
    fn claim(&self, id: Uuid, topic: &str) -> Claim {
        self.inner.index.lock().unwrap().sent.claim(id, topic)
    }

    /// Checks what needs no topic: size and property names.
    fn validate(&self, r: &SendRequest) -> Result<()> {
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
        Ok(())
    }

    /// The record of a validated send: its queue chosen, the topic created if need be.
    async fn prepare(&self, r: SendRequest, now: u64) -> Result<NewRecord> {
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
        Ok(record)
    }

    /// A send whose id another send had claimed: once that claim ends, answered from the copy
    /// it stored, or stored now if it failed.
    async fn send_after_claim(
        &self,
        r: SendRequest,
        mut waiting: watch::Receiver<()>,
        now: u64,
    ) -> Result<SendResult> {
        loop {
            // Never sent on: this returns when the claimant drops its sender.
            let _ = waiting.changed().await;
            let claim = self.claim(r.message_id, &r.topic);
            match claim {
                Claim::Stored(sent) => {
                    return Ok(self.answer_duplicate(r.message_id, r.topic, sent).await);
                }
                Claim::Pending(next) => waiting = next,
                Claim::Claimed(done) => {
                    let mut claims = Claims::new(self);
                    claims.push(r.message_id, &r.topic, done);
                    let record = self.prepare(r, now).await?;
                    let mut out = self.append_claimed(vec![record], claims).await?;
                    return Ok(out.pop().expect("one result per stored record"));
                }
            }
        }
    }

    /// The answer to a send whose message id is already stored: the first copy's place and its
    /// status now (under `SYNC_MASTER`, waiting for its replicas as a new send would).
    async fn answer_duplicate(&self, message_id: Uuid, topic: String, sent: Sent) -> SendResult {
        metrics::counter!("broker_lite_sends_deduplicated_total").increment(1);
        let status = if self.inner.store.durable_position() <= sent.log_position {
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
        self.append_claimed(records, Claims::new(self)).await
    }

    /// [`append`](Self::append) for sends holding `claims` on their ids: released once the
    /// records are in the send window, before the wait for replicas, so that a send waiting on
    /// a claim waits for one replication, not two.
    async fn append_claimed(
        &self,
        records: Vec<NewRecord>,
        mut claims: Claims,
    ) -> Result<Vec<SendResult>> {
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
        // In the send window before the wait for replicas, so that a retry arriving meanwhile is
        // answered from this copy.
        {
            let mut index = self.inner.index.lock().unwrap();
            for ((message_id, topic, queue_id), a) in heads.iter().zip(&appended) {
                if !topic.starts_with('%') {
                    index.sent.insert(
                        *message_id,
                        topic,
                        *queue_id,
                        a.queue_offset,
                        a.log_position,
                    );
                }
            }
            claims.release_in(&mut index.sent);
        }
        drop(claims);
        // SYNC_MASTER: wait for the replicas of the whole batch (records are placed in order).
        let replicated = match (&self.inner.leader, appended.last()) {
            (Some(leader), Some(last)) => leader.replicated(last.log_position).await,
            _ => SendStatus::SendOk,
        };
        let now = self.now_ms();
        let mut results = Vec::with_capacity(heads.len());
        let mut trace = self.inner.trace.lock().unwrap();
        for ((message_id, topic, queue_id), a) in heads.into_iter().zip(appended) {
            let mut status = status_of(a.outcome, self.inner.config.replication);
            if status.is_ok() {
                status = replicated;
            }
            metrics::counter!("broker_lite_sends_total", "status" => format!("{status:?}"))
                .increment(1);
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
        drop(trace);
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

    async fn broker() -> (tempfile::TempDir, Broker) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::broker::BrokerConfig::default();
        config.store.segment_size = 1 << 20;
        config.store.max_record_size = 64 << 10;
        config.max_message_size = 32 << 10;
        let broker = Broker::open(dir.path(), config).await.unwrap();
        (dir, broker)
    }

    fn copy_of(id: Uuid) -> SendRequest {
        SendRequest::new("orders", "once")
            .with_key("dedupe-key")
            .with_message_id(id)
    }

    /// How many copies of the test's message the log holds.
    async fn copies(broker: &Broker) -> usize {
        broker
            .lookup_by_key("orders", "dedupe-key", 100)
            .await
            .unwrap()
            .len()
    }

    #[tokio::test]
    async fn one_id_twice_in_one_batch_is_stored_once() {
        let (_dir, b) = broker().await;
        let id = Uuid::now_v7();
        let r = b.send_batch(vec![copy_of(id), copy_of(id)]).await.unwrap();
        assert_eq!(copies(&b).await, 1, "results {r:?}");
        assert_eq!((r[0].duplicate, r[1].duplicate), (false, true));
        assert_eq!(
            (r[1].queue_id, r[1].queue_offset, r[1].status),
            (r[0].queue_id, r[0].queue_offset, r[0].status)
        );
        b.close().await.unwrap();
    }

    #[tokio::test]
    async fn sends_of_one_id_at_the_same_instant_are_stored_once() {
        let (_dir, b) = broker().await;
        let id = Uuid::now_v7();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (b, start) = (b.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    b.send(copy_of(id)).await.unwrap()
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert_eq!(copies(&b).await, 1, "results {results:?}");
        assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
        assert!(
            results.iter().all(
                |r| r.status == SendStatus::SendOk && r.queue_offset == results[0].queue_offset
            )
        );
        b.close().await.unwrap();
    }
}
