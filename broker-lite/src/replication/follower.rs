//! The follower side: the fetch loop that copies the leader's log and state checkpoints into the
//! local store.
//!
//! The loop asks from its own written log end. While it is behind (a batch of half a fetch or
//! more) it fetches again as soon as a batch is written, while the store's writer fsyncs it
//! (`SYNC_FLUSH` is required on a follower), so the next records are on their way during the
//! fsync; once it keeps up it waits for the fsync first, since the leader has nothing new before
//! its sends are acknowledged. What is durable is reported apart, with every fetch and, after
//! each fsync, with a `ReplicaAck` on the same connection, so a `SYNC_MASTER` send waiting for
//! this follower is answered when its fsync completes, not when the next fetch goes out. Records are appended in the leader's order with the leader's
//! segment size, so each lands at the leader's log position and queue offset; a record that
//! would land elsewhere stops the loop (the logs diverged) instead of silently storing a
//! different log.
//!
//! What is carried how:
//! - the commit log (messages, dead letters in `%DLQ%<group>` topics, re-driven messages): record
//!   by record;
//! - topics and consumer-group offsets with the reconsume counts and due times of delayed
//!   redeliveries (the broker's `broker-topics` / `broker-offsets` checkpoints): copied whole,
//!   every `checkpoint_interval`; the leader saves them every `offsets_save_interval`, so after a
//!   failover at most the messages acked since the last copy are delivered again (at least once,
//!   as after a restart of a single node);
//! - deliveries in flight (not settled yet) live in the leader's memory only: after a failover
//!   they are redelivered, since the committed offset never passes an unsettled message.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::epochs;
use crate::broker::STATE_CHECKPOINTS;
use crate::client::{Connection, Security};
use crate::protocol::{EpochStart, ReplicaAck, ReplicaBatch, ReplicaFetch, Request, Response};
use crate::storage::{NewRecord, Store, StoreConfig};

/// How a follower reaches and copies its leader.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FollowerConfig {
    /// The leader's `host:port`.
    pub leader_address: String,
    /// This follower's name, unique among the leader's followers.
    pub name: String,
    /// TLS and credentials for the leader (the user needs the admin permission).
    pub security: Security,
    /// Record bytes per fetch. Default 4 MiB.
    pub max_fetch_bytes: u32,
    /// How long a fetch waits at the leader for new records. Default 200 ms.
    pub max_wait: Duration,
    /// How often the state checkpoints are copied. Default 500 ms.
    pub checkpoint_interval: Duration,
    /// How this node leads once promoted (`SyncMaster` or `AsyncMaster`). Default
    /// `SyncMaster` with one in-sync replica and a 3 s slave timeout: until a follower joins the
    /// new leader, sends answer `SLAVE_NOT_AVAILABLE` rather than being acknowledged on one disk.
    pub lead_with: crate::broker::Replication,
}

impl FollowerConfig {
    /// A follower named `name` of the leader at `leader_address`, without TLS or credentials.
    pub fn new(leader_address: impl Into<String>, name: impl Into<String>) -> Self {
        FollowerConfig {
            leader_address: leader_address.into(),
            name: name.into(),
            security: Security::default(),
            max_fetch_bytes: 4 << 20,
            max_wait: Duration::from_millis(200),
            checkpoint_interval: Duration::from_millis(500),
            lead_with: crate::broker::Replication::SyncMaster {
                min_sync_replicas: 1,
                slave_timeout: Duration::from_secs(3),
            },
        }
    }
}

/// What the fetch loop shares with `describe`.
#[derive(Debug, Default)]
pub(crate) struct FollowerProgress {
    pub(crate) epoch: AtomicU64,
    pub(crate) position: AtomicU64,
    pub(crate) leader_commit: AtomicU64,
    /// The leader's durable log end at its last answer.
    pub(crate) leader_log_end: AtomicU64,
    /// Up to where the leader had acknowledged sends at its last answer.
    pub(crate) leader_acked_end: AtomicU64,
    /// When the leader last answered; `None` until it first does after this node started.
    pub(crate) last_contact: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Copies the leader's log into the store until `stop` is cancelled, reconnecting after errors,
/// cutting a diverged suffix; closes the store at the end. Returns an error only for what
/// retrying cannot fix (a segment size that differs, a failed truncation).
pub(crate) async fn run(
    store: Store,
    dir: PathBuf,
    store_config: StoreConfig,
    config: FollowerConfig,
    progress: Arc<FollowerProgress>,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut store = store;
    let result = follow(&mut store, &dir, &store_config, &config, &progress, &stop).await;
    let closed = store.close().await.map_err(|e| e.to_string());
    if closed.is_ok() {
        // Closing fsyncs what the last fetches wrote.
        progress
            .position
            .fetch_max(store.progress().flushed, Ordering::AcqRel);
    }
    result.and(closed)
}

async fn follow(
    store: &mut Store,
    dir: &std::path::Path,
    store_config: &StoreConfig,
    config: &FollowerConfig,
    progress: &FollowerProgress,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut history = epochs::load(store).await.map_err(|e| e.to_string())?;
    let mut backoff = Duration::from_millis(50);
    loop {
        let connect = Connection::connect_with(
            &config.leader_address,
            Duration::from_secs(5),
            crate::protocol::DEFAULT_MAX_FRAME_SIZE,
            &config.security,
        );
        let connection = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = connect => c,
        };
        let result = match connection {
            Ok(c) => {
                backoff = Duration::from_millis(50);
                tracing::info!(
                    leader = config.leader_address,
                    "follower connected to its leader"
                );
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    r = copy(&c, store, config, &mut history, progress) => r,
                }
            }
            Err(e) => Err(Failure::Retry(e.to_string())),
        };
        match result {
            Ok(()) => {}
            Err(Failure::Fatal(reason)) => {
                tracing::error!(%reason, "replication stopped");
                return Err(reason);
            }
            Err(Failure::Truncate(position, leader_history)) => {
                let end = store.progress().written;
                tracing::warn!(
                    position,
                    end,
                    "this node's log diverged from the leader's \
                    (it wrote after it was superseded): cutting it at the end of the last \
                    common epoch"
                );
                store.close().await.map_err(|e| e.to_string())?;
                let owned = dir.to_owned();
                let cut = tokio::task::spawn_blocking(move || {
                    crate::storage::truncate_log(&owned, position)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cutting the diverged log failed: {e}"))?;
                *store = Store::open(dir, store_config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                epochs::save(store, &leader_history)
                    .await
                    .map_err(|e| e.to_string())?;
                history = leader_history;
                metrics::counter!("broker_lite_replication_truncated_bytes_total").increment(cut);
                tracing::warn!(position, cut, "diverged suffix removed; following again");
                continue;
            }
            Err(Failure::Retry(reason)) => {
                tracing::warn!(%reason, leader = config.leader_address, "replication interrupted; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

enum Failure {
    Retry(String),
    Fatal(String),
    /// Cut the log here and adopt the leader's history.
    Truncate(u64, Vec<EpochStart>),
}

/// Where this node's log (ending at `end`) must be cut to be a prefix of the leader's, judged by
/// the epoch histories (Kafka's leader-epoch rule) and the leader's log end `leader_end`; `None`
/// when it is one already. See the `replication` module docs for why what is cut was never
/// acknowledged.
fn truncation_point(
    mine: &[EpochStart],
    leader: &[EpochStart],
    end: u64,
    leader_end: u64,
) -> Option<u64> {
    let common = mine.iter().zip(leader).take_while(|(a, b)| a == b).count();
    let point = if common < mine.len() {
        // This node led an epoch the leader does not know: keep only what the last common
        // epoch holds in the leader's log.
        match common {
            0 => 0,
            _ => leader.get(common)?.start_position,
        }
    } else if epochs::current(mine) == epochs::current(leader) {
        // The same epoch: the leader's log end, when this node holds more (it got records the
        // leader never made durable, and the leader lost them without starting an epoch).
        leader_end
    } else {
        // An older epoch: it ended where the leader's next one started. Records this node got
        // past that point (written on the old leader, never durable there, lost in its restart
        // or never copied to the node promoted instead) are not part of the leader's log.
        epochs::end_of(leader, epochs::current(mine))?
    };
    (point < end).then_some(point)
}

/// Fetches and applies batches on `c`, reporting each fsync beside, until an error.
async fn copy(
    c: &Connection,
    store: &Store,
    config: &FollowerConfig,
    history: &mut Vec<EpochStart>,
    progress: &FollowerProgress,
) -> Result<(), Failure> {
    let epoch = AtomicU64::new(epochs::current(history));
    tokio::select! {
        r = fetch_loop(c, store, config, history, &epoch, progress) => r,
        r = report_durable(c, store, config, &epoch, progress) => r,
    }
}

async fn fetch_loop(
    c: &Connection,
    store: &Store,
    config: &FollowerConfig,
    history: &mut Vec<EpochStart>,
    epoch: &AtomicU64,
    progress: &FollowerProgress,
) -> Result<(), Failure> {
    let mut last_checkpoints: Option<tokio::time::Instant> = None;
    loop {
        let want_checkpoints =
            last_checkpoints.is_none_or(|t| t.elapsed() >= config.checkpoint_interval);
        let p = store.progress();
        let fetch = ReplicaFetch {
            follower: config.name.clone(),
            epoch: epochs::current(history),
            from_position: p.written,
            durable_position: p.flushed,
            max_bytes: config.max_fetch_bytes,
            max_wait_ms: u32::try_from(config.max_wait.as_millis()).unwrap_or(u32::MAX),
            want_checkpoints,
        };
        let timeout = config.max_wait + Duration::from_secs(10);
        let batch = match c.request(&Request::ReplicaFetch(fetch), timeout).await {
            Ok(Response::ReplicaBatch(b)) => b,
            Ok(other) => return Err(Failure::Retry(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        if let Some(point) = truncation_point(history, &batch.epochs, p.written, batch.log_end) {
            return Err(Failure::Truncate(point, batch.epochs));
        }
        if want_checkpoints {
            last_checkpoints = Some(tokio::time::Instant::now());
        }
        let (commit, log_end, acked_end) = (batch.commit_position, batch.log_end, batch.acked_end);
        let record_bytes: usize = batch.records.iter().map(|r| r.body.len()).sum();
        apply(store, batch, history).await?;
        if record_bytes < config.max_fetch_bytes as usize / 2 {
            // Keeping up: the next records come only once the leader's sends are acknowledged,
            // which needs this fsync; fetching before it adds a fetch and an ack per round on
            // cores the leader shares (scenario 9 measured a worse tail), for nothing gained.
            // Behind (a batch of half a fetch or more), fetching during the fsync is what
            // catches up faster.
            wait_durable(store, store.progress().written).await?;
        }
        epoch.store(epochs::current(history), Ordering::Release);
        progress
            .epoch
            .store(epochs::current(history), Ordering::Release);
        progress
            .position
            .fetch_max(store.progress().flushed, Ordering::AcqRel);
        progress.leader_commit.store(commit, Ordering::Release);
        progress.leader_log_end.store(log_end, Ordering::Release);
        progress
            .leader_acked_end
            .store(acked_end, Ordering::Release);
        *progress.last_contact.lock().unwrap() = Some(std::time::Instant::now());
    }
}

/// Waits until the store holds everything below `end` durably (or failed, which the next append
/// reports).
async fn wait_durable(store: &Store, end: u64) -> Result<(), Failure> {
    let mut changes = store.subscribe();
    match changes.wait_for(|p| p.flushed >= end || p.failed).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Failure::Retry("the follower's store closed".into())),
    }
}

/// Tells the leader the durable log end after each fsync of the store (coalesced: while one
/// report is on its way, later fsyncs wait for the next).
async fn report_durable(
    c: &Connection,
    store: &Store,
    config: &FollowerConfig,
    epoch: &AtomicU64,
    progress: &FollowerProgress,
) -> Result<(), Failure> {
    let mut changes = store.subscribe();
    let mut reported = store.progress().flushed;
    loop {
        if changes.changed().await.is_err() {
            return Err(Failure::Retry("the follower's store closed".into()));
        }
        let flushed = changes.borrow_and_update().flushed;
        if flushed <= reported {
            continue;
        }
        reported = flushed;
        progress.position.fetch_max(flushed, Ordering::AcqRel);
        let ack = ReplicaAck {
            follower: config.name.clone(),
            epoch: epoch.load(Ordering::Acquire),
            durable_position: flushed,
        };
        match c
            .request(&Request::ReplicaAck(ack), Duration::from_secs(10))
            .await
        {
            Ok(Response::Done) => {}
            Ok(other) => return Err(Failure::Retry(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(Failure::Retry(e.to_string())),
        }
    }
}

async fn apply(
    store: &Store,
    batch: ReplicaBatch,
    history: &mut Vec<EpochStart>,
) -> Result<(), Failure> {
    if batch.segment_size != store.segment_size() {
        return Err(Failure::Fatal(format!(
            "the leader's segment size is {} bytes and this follower's {}: start the follower \
             with --segment-bytes {} (records must land at the leader's positions)",
            batch.segment_size,
            store.segment_size(),
            batch.segment_size
        )));
    }
    if batch.epochs != *history {
        epochs::save(store, &batch.epochs)
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        *history = batch.epochs;
    }
    if !batch.records.is_empty() {
        let mut places = Vec::with_capacity(batch.records.len());
        let records: Vec<NewRecord> = batch
            .records
            .into_iter()
            .map(|r| {
                places.push((r.log_position, r.message_id));
                let mut n = NewRecord::new(r.topic, r.queue_id, r.body);
                n.message_id = r.message_id;
                n.key = r.key;
                n.tag = r.tag;
                n.properties = r.properties;
                n.born_timestamp_ms = r.born_timestamp_ms;
                n.flags = r.flags;
                n
            })
            .collect();
        // Written, not yet fsynced: `report_durable` tells the leader when they are.
        let appended = store
            .append_batch_written(records)
            .await
            .map_err(|e| Failure::Retry(format!("storing replicated records failed: {e}")))?;
        for (a, (position, id)) in appended.iter().zip(places) {
            if a.log_position != position {
                return Err(Failure::Fatal(format!(
                    "replicated record {id} landed at position {} instead of the leader's \
                     {position}: the logs diverged; move this follower's data directory away and \
                     start it empty",
                    a.log_position
                )));
            }
        }
    }
    for (name, bytes) in batch.checkpoints {
        if STATE_CHECKPOINTS.contains(&name.as_str()) {
            store
                .save_checkpoint(&name, bytes)
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: u64, start_position: u64) -> EpochStart {
        EpochStart {
            epoch,
            start_position,
        }
    }

    #[test]
    fn a_suffix_past_the_end_of_its_epoch_is_cut() {
        // The leader restarted (epoch 3 at 800) and lost what this follower got from 800 on.
        let leader = [e(1, 0), e(2, 500), e(3, 800)];
        assert_eq!(truncation_point(&leader[..2], &leader, 950, 800), Some(800));
        assert_eq!(truncation_point(&leader[..2], &leader, 800, 800), None);
        assert_eq!(truncation_point(&leader[..2], &leader, 700, 900), None);
    }

    #[test]
    fn within_one_epoch_the_leader_end_bounds_the_log() {
        let h = [e(1, 0), e(2, 500)];
        assert_eq!(truncation_point(&h, &h, 950, 900), Some(900));
        assert_eq!(truncation_point(&h, &h, 900, 900), None);
        assert_eq!(truncation_point(&h, &h, 600, 900), None);
    }

    #[test]
    fn a_former_leader_keeps_only_the_common_epochs() {
        // This node led epoch 3 from 800; the leader led its own epoch 3 from 700.
        let mine = [e(1, 0), e(2, 500), e(3, 800)];
        let leader = [e(1, 0), e(2, 500), e(3, 700), e(4, 900)];
        assert_eq!(truncation_point(&mine, &leader, 1000, 1200), Some(700));
        assert_eq!(truncation_point(&mine[..1], &[e(2, 0)], 10, 50), Some(0));
    }
}
