//! The broker core: topics, consumer groups, delivery, redelivery with delay levels, dead letters,
//! message trace and retention, over a [`Store`]. This is the embedded (in-process) API; the
//! network server is a thin layer over the same [`Broker`] methods.
//!
//! # Delivery model
//!
//! Delivery is broker-side ("POP" style), so clients stay thin: a member
//! [`subscribe`](Broker::subscribe)s to a topic within a consumer group, then
//! [`pull`](Broker::pull)s [`Delivery`]s and settles each one with [`ack`](Broker::ack) or
//! [`nack`](Broker::nack) using its [`Receipt`].
//!
//! - **Clustering** (safeguard C5): a topic's queues are balanced across the group's live members
//!   (RocketMQ's "allocate averagely"); a join, a leave, a closed connection or a missed
//!   heartbeat rebalances them and the in-flight messages of a moved queue are redelivered to its
//!   new owner (ordered ones once the old owner settled them, timed out or is gone). All members
//!   of a group use one tag filter per topic; a subscription with another one is refused.
//! - **Broadcasting**: every member reads every queue with its own offsets.
//! - **In flight until settled**: a delivered message that is not settled within
//!   [`BrokerConfig::consume_timeout`] is redelivered (safeguard C3), with its reconsume count
//!   raised.
//! - **Nack** (RECONSUME_LATER, safeguard C1/C8): the message is redelivered after a delay level
//!   (level 3 = 10 s the first time, one level up each time after), and after
//!   [`BrokerConfig::max_reconsume_times`] redeliveries it moves to the group's dead-letter topic
//!   `%DLQ%<group>`, where it can be listed and re-driven.
//! - **Dead letter now** (a permanent failure, safeguard C8): [`dead_letter`](Broker::dead_letter)
//!   moves a delivery to `%DLQ%<group>` at once, with the consumer's reason, instead of retrying
//!   a message that can never be handled `max_reconsume_times` times.
//! - **Ordered** members get at most one message per queue in flight; a nack redelivers the same
//!   message in place after its delay, so the order is kept. Past `max_reconsume_times` it is
//!   dead-lettered like any other message and the queue moves on (RocketMQ would suspend the
//!   queue forever).
//!
//! A nacked or timed-out message is redelivered *in place*: its queue's committed offset (the
//! lowest unsettled one) does not move past it until it is acked or dead-lettered. The committed
//! offsets, the reconsume counts and the due times of waiting messages are saved with
//! [`Store::save_checkpoint`] every [`BrokerConfig::offsets_save_interval`] and on
//! [`close`](Broker::close); after a restart consumption resumes from the committed offsets, so
//! every message not acked before the last save is delivered again (at least once). A crash
//! between two saves can repeat acked messages and forget reconsume counts of the last interval,
//! never lose a message.
//!
//! Why in place rather than RocketMQ's `%RETRY%<group>` topic: a retry topic copies every
//! nacked message into the log and needs a second cursor per group; keeping the message where it
//! is and remembering (offset, reconsume count, due time) in the offsets checkpoint gives the same
//! guarantees with one cursor per queue, keeps ordered consumption trivially in order, and a
//! restart can never lose the message since the committed offset has not passed it. The cost: a
//! message waiting for a long delay holds its queue's committed offset back, so lag includes it,
//! and a queue whose oldest message is stuck stops after
//! [`BrokerConfig::max_pending_per_queue`] newer ones (RocketMQ's `consumeConcurrentlyMaxSpan`).
//!
//! # Time
//!
//! Every broker timer (delay levels, consume timeout, heartbeat timeout) reads
//! [`BrokerConfig::clock`]. Tests inject a [`ManualClock`] and move it; the broker checks due
//! work on every pull (at most every 100 ms of broker-clock time) and in a background task.
//!
//! Do not send under paused tokio time (`start_paused`): the store's writer is a plain thread,
//! so while an append waits for it the runtime looks idle, tokio auto-advances to the append's
//! `sync_flush_timeout`, and the send fails with a write timeout. Move the [`ManualClock`]
//! instead; pausing tokio time *after* the sends (to drive the background tasks) is fine.
//!
//! # Metrics (safeguards L3, L5)
//!
//! `broker_lite_sends_total{status}`, `broker_lite_send_errors_total`, `broker_lite_pulls_total`,
//! `broker_lite_deliveries_total{group}`, `broker_lite_acks_total{group}`,
//! `broker_lite_nacks_total{group}`, `broker_lite_redeliveries_total{group}`,
//! `broker_lite_consume_timeouts_total{group}`, `broker_lite_dead_letters_total{group}`,
//! `broker_lite_rebalances_total{group}`, `broker_lite_consumer_lag{group,topic,queue}`,
//! `broker_lite_unconsumed_expiring{group,topic,queue}`, `broker_lite_unconsumed_lost_total{group}`,
//! `broker_lite_offsets_lost_in_recovery_total{group}`.
//!
//! # Example
//!
//! ```
//! use broker_lite::broker::{Broker, BrokerConfig, ConsumerSpec, PullRequest, SendRequest, SendStatus};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut config = BrokerConfig::default();
//! config.store.segment_size = 1 << 20;
//! config.store.max_record_size = 64 << 10;
//! config.max_message_size = 32 << 10;
//! let broker = Broker::open(dir.path(), config).await?;
//!
//! let sent = broker.send(SendRequest::new("orders", "order 42").with_key("42")).await?;
//! assert_eq!(sent.status, SendStatus::SendOk);
//!
//! broker.subscribe(ConsumerSpec::new("billing", "billing-1", "orders")).await?;
//! let deliveries = broker.pull(PullRequest::new("billing", "billing-1", "orders")).await?;
//! assert_eq!(&deliveries[0].body[..], b"order 42");
//! broker.ack(&deliveries[0].receipt).await?;
//! broker.close().await?;
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::storage::Store;
use crate::storage::backend::StorageBackend;

mod admin;
pub(crate) mod budget;
mod clock;
mod config;
mod consumer;
mod cursor;
mod dead_letter;
mod dedupe;
mod error;
mod group;
mod index;
mod membership;
mod message;
mod offsets;
mod pull;
mod receipt;
mod redrive;
mod retention;
mod send;
mod settle;
mod tasks;
mod topics;
mod trace;

/// The store checkpoints that hold broker state outside the log (topics; consumer offsets with
/// reconsume counts and the due times of delayed redeliveries): what a follower copies besides
/// the log.
pub(crate) const STATE_CHECKPOINTS: [&str; 2] = [topics::CHECKPOINT, offsets::CHECKPOINT];

pub use admin::{GroupInfo, MemberInfo, MessagePage, QueueLag};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{BrokerConfig, ConsumeFrom, ROCKETMQ_DELAY_LEVELS, Replication};
pub use consumer::{
    ConsumerSpec, Delivery, MessageModel, NackOutcome, PullRequest, Receipt, SessionId,
};
pub use error::{BrokerError, Result};
pub use message::{SendRequest, SendResult, SendStatus, StoredMessage};
pub use receipt::ReceiptKey;
pub use retention::{LostMessages, RetentionOutcome};
pub use topics::TopicInfo;
pub use trace::{TraceEvent, TraceKind};

use group::Group;
use index::MessageIndex;
use trace::Trace;

/// The broker: cheap to clone, every clone shares the same state.
///
/// See the [module docs](self) for the delivery model and an example.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    config: BrokerConfig,
    state: Mutex<State>,
    trace: Mutex<Trace>,
    index: Mutex<MessageIndex>,
    /// Woken when a message becomes deliverable other than by a store write (settle, rebalance).
    wake: Notify,
    round_robin: AtomicU32,
    offsets_dirty: AtomicBool,
    /// Broker-clock time of the last housekeeping run started by a pull.
    last_housekeeping_ms: AtomicU64,
    /// Serializes checkpoint writes so an older snapshot never overwrites a newer one.
    save_lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The leadership, under `SyncMaster` / `AsyncMaster` replication.
    leader: Option<crate::replication::Leader>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Everything behind the broker's lock.
#[derive(Debug, Default)]
struct State {
    /// Topic name to queue count.
    topics: std::collections::BTreeMap<String, u32>,
    groups: std::collections::BTreeMap<String, Group>,
}

impl Broker {
    /// Opens (or creates) a broker with its store in directory `dir`.
    ///
    /// # Errors
    /// [`BrokerError::InvalidConfig`]; [`BrokerError::Storage`] when the store cannot open;
    /// [`BrokerError::CorruptState`] when a broker checkpoint cannot be decoded.
    pub async fn open(dir: impl AsRef<Path>, config: BrokerConfig) -> Result<Broker> {
        config.validate()?;
        let store = Store::open(dir, config.store.clone()).await?;
        Self::open_with_store(store, config).await
    }

    /// Opens a broker over a store on `backend` (for instance a
    /// [`FaultyBackend`](crate::storage::backend::FaultyBackend) in tests).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_with_backend(
        backend: Arc<dyn StorageBackend>,
        config: BrokerConfig,
    ) -> Result<Broker> {
        config.validate()?;
        let store = Store::open_with_backend(backend, config.store.clone()).await?;
        Self::open_with_store(store, config).await
    }

    /// Opens a broker over an open `store` (whose own configuration wins over `config.store`;
    /// keep their `file_reserved_time` equal, the retention warning reads `config.store`):
    /// loads topics and consumer offsets (cutting back, and saving, any offset past the end of
    /// its recovered queue: see the `offsets` module source), rebuilds the message index from
    /// the log and starts the background tasks (unless [`BrokerConfig::background_tasks`] is
    /// off).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_with_store(store: Store, config: BrokerConfig) -> Result<Broker> {
        config.validate()?;
        let leader = crate::replication::Leader::start(&store, config.replication).await?;
        let topics = topics::load(&store).await?;
        let mut groups = offsets::load(&store).await?;
        let clamped = offsets::clamp_to_log(&store, &mut groups);
        let index = index::rebuild(&store).await?;
        let trace = Trace::new(config.trace_capacity);
        let broker = Broker {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(State { topics, groups }),
                trace: Mutex::new(trace),
                index: Mutex::new(index),
                wake: Notify::new(),
                round_robin: AtomicU32::new(0),
                offsets_dirty: AtomicBool::new(false),
                last_housekeeping_ms: AtomicU64::new(0),
                save_lock: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
                leader,
                config,
            }),
        };
        if clamped > 0 {
            // Before anything is sent: a crash must not bring back the offsets past the log.
            broker.save_offsets_now().await?;
        }
        if broker.inner.config.background_tasks {
            let tasks = tasks::spawn(&broker);
            broker.inner.tasks.lock().unwrap().extend(tasks);
        }
        tracing::info!(
            topics = broker.inner.state.lock().unwrap().topics.len(),
            "broker opened"
        );
        Ok(broker)
    }

    /// The leadership's replication state, under `SyncMaster` / `AsyncMaster` replication.
    pub fn replication(&self) -> Option<&crate::replication::Leader> {
        self.inner.leader.as_ref()
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Stops the background tasks, saves the consumer offsets and closes the store. Later calls
    /// fail with [`BrokerError::Closed`]; closing twice is fine.
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when the offsets cannot be saved or the final fsync fails.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        for task in self.inner.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        self.inner.wake.notify_waiters();
        let saved = self.save_offsets_now().await;
        self.inner.store.close().await?;
        saved?;
        tracing::info!("broker closed");
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::Closed);
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.inner.config.clock.now_ms()
    }

    fn mark_dirty(&self) {
        self.inner.offsets_dirty.store(true, Ordering::SeqCst);
    }
}
