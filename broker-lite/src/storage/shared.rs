//! State shared by the store handle, its writer thread and its background tasks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use tokio::sync::{oneshot, watch};

use super::backend::StorageBackend;
use super::checkpoint::{self, IndexCheckpoint, STORE_CHECKPOINT, StoreCheckpoint};
use super::config::{FlushMode, StoreConfig};
use super::error::{Result, StorageError};
use super::index::Index;
use super::segment::Segment;

/// How far the log has been written and flushed.
///
/// Obtained from [`Store::subscribe`](super::Store::subscribe) and [`Store::progress`](super::Store::progress);
/// see there for when subscribers are notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Log position just past the last written record.
    pub written: u64,
    /// Log position just past the last fsynced record.
    pub flushed: u64,
    /// The durable position recorded in the store checkpoint: damage below it stops recovery.
    pub checkpointed: u64,
    /// Whether the store failed after a write or fsync error and refuses all writes.
    pub failed: bool,
}

/// Where the writer answers a flush: the flushed position.
pub(crate) type FlushReply = oneshot::Sender<Result<u64>>;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn StorageBackend>,
    pub(crate) config: StoreConfig,
    /// Segments in log order; the last one is the active one.
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    pub(crate) index: RwLock<Index>,
    pub(crate) progress: watch::Sender<Progress>,
    failure: Mutex<Option<String>>,
    /// Whether the store checkpoint records the failure (see [`fence_gated`](Self::fence_gated)).
    fenced: AtomicBool,
    checkpoint_lock: Mutex<()>,
    /// Flushes asked for by the async flush ticker, taken by the writer with its next batch;
    /// `None` once the writer stopped (see [`request_flush`](Self::request_flush)).
    flush_requests: Mutex<Option<Vec<FlushReply>>>,
    /// `true` once the store is closed or dropped. Every file change holds a read guard, so after
    /// [`shut_down`](Self::shut_down) returns this store never touches the directory again, even
    /// from a writer thread or a blocking task that outlives the handle.
    gate: RwLock<bool>,
    /// Readers see nothing at or past this position (the replication commit position of a
    /// `SYNC_MASTER` leader); `u64::MAX` when unlimited.
    pub(crate) visible_limit: AtomicU64,
    /// The written end, published by the writer after every write, also under sync flush (where
    /// [`progress`](Self::progress) wakes nobody before the fsync): a replication leader ships
    /// records from here before they are durable, so that its fsync and the follower's overlap.
    pub(crate) written: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(
        backend: Arc<dyn StorageBackend>,
        config: StoreConfig,
        segments: Vec<Arc<Segment>>,
        index: Index,
        position: u64,
    ) -> Self {
        let (progress, _) = watch::channel(Progress {
            written: position,
            flushed: position,
            checkpointed: 0,
            failed: false,
        });
        Shared {
            backend,
            config,
            segments: RwLock::new(segments),
            index: RwLock::new(index),
            progress,
            failure: Mutex::new(None),
            fenced: AtomicBool::new(false),
            checkpoint_lock: Mutex::new(()),
            flush_requests: Mutex::new(Some(Vec::new())),
            gate: RwLock::new(false),
            visible_limit: AtomicU64::new(u64::MAX),
            written: watch::channel(position).0,
        }
    }

    /// Records are readable up to this position: flushed under sync flush, written under async.
    pub(crate) fn visible(&self) -> u64 {
        self.durable()
            .min(self.visible_limit.load(Ordering::Acquire))
    }

    /// Records are durable as the flush mode promises up to this position: flushed under sync
    /// flush, written under async (the visible limit does not apply).
    pub(crate) fn durable(&self) -> u64 {
        let p = *self.progress.borrow();
        match self.config.flush_mode {
            FlushMode::Sync => p.flushed,
            _ => p.written,
        }
    }

    /// Asks the writer to fsync with its next batch and answer on `reply`; `false` (and `reply`
    /// dropped) when the writer has stopped. Unlike a command, a request never waits for room in
    /// the writer's queue.
    pub(crate) fn request_flush(&self, reply: FlushReply) -> bool {
        match &mut *self.flush_requests.lock().unwrap() {
            Some(requests) => {
                requests.push(reply);
                true
            }
            None => false,
        }
    }

    /// The flush requests waiting for the writer.
    pub(crate) fn take_flush_requests(&self) -> Vec<FlushReply> {
        self.flush_requests
            .lock()
            .unwrap()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Called when the writer stops: pending and later requests are dropped, so that no waiter
    /// blocks for good.
    pub(crate) fn stop_flush_requests(&self) {
        self.flush_requests.lock().unwrap().take();
    }

    /// Puts the store into the failed state for good and records that in the store checkpoint
    /// (see [`fence_gated`](Self::fence_gated)). The caller holds [`open_gate`](Self::open_gate).
    pub(crate) fn fail(&self, reason: String) {
        tracing::error!(%reason, "storage failed; refusing further writes");
        metrics::counter!("broker_lite_storage_failures_total").increment(1);
        self.failure.lock().unwrap().get_or_insert(reason);
        self.progress.send_modify(|p| p.failed = true);
        self.fence_gated();
    }

    /// Once failed, writes the store checkpoint with its fence, unless that was done already: the
    /// next open then cuts the log at the last successfully fsynced position, whatever the page
    /// cache shows beyond it. The disk may refuse this write too; the writer tries again with
    /// every later command, on close and when the store is dropped. The caller holds
    /// [`open_gate`](Self::open_gate).
    pub(crate) fn fence_gated(&self) {
        if self.check_failed().is_ok() || self.fenced.load(Ordering::SeqCst) {
            return;
        }
        match self.write_checkpoint_gated() {
            Ok(durable) => tracing::warn!(
                durable,
                "recorded the failure in the store checkpoint: the next open cuts the log at the \
                 last successfully fsynced position"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not record the failure in the store checkpoint yet")
            }
        }
    }

    /// [`fence_gated`](Self::fence_gated) for a caller that does not hold the gate.
    pub(crate) fn fence(&self) {
        if let Ok(_open) = self.open_gate() {
            self.fence_gated();
        }
    }

    /// `Err(Failed)` once the store has failed.
    pub(crate) fn check_failed(&self) -> Result<()> {
        match &*self.failure.lock().unwrap() {
            Some(reason) => Err(StorageError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// The segment holding `position`, if it still exists.
    pub(crate) fn segment_at(&self, position: u64) -> Option<Arc<Segment>> {
        let segments = self.segments.read().unwrap();
        let i = segments.partition_point(|s| s.base <= position);
        let s = segments.get(i.checked_sub(1)?)?;
        s.contains(position).then(|| s.clone())
    }

    /// A guard that keeps the store open while held; `Err(Closed)` once it is shut down.
    pub(crate) fn open_gate(&self) -> Result<RwLockReadGuard<'_, bool>> {
        let gate = self.gate.read().unwrap();
        if *gate {
            return Err(StorageError::Closed);
        }
        Ok(gate)
    }

    /// Waits for file changes in progress, then refuses all later ones.
    pub(crate) fn shut_down(&self) {
        *self.gate.write().unwrap() = true;
    }

    /// Atomically writes the store checkpoint: the flushed position and every queue's first offset.
    pub(crate) fn write_checkpoint(&self) -> Result<u64> {
        let _open = self.open_gate()?;
        self.write_checkpoint_gated()
    }

    /// [`write_checkpoint`](Self::write_checkpoint) for a caller that holds [`open_gate`](Self::open_gate).
    pub(crate) fn write_checkpoint_gated(&self) -> Result<u64> {
        let _guard = self.checkpoint_lock.lock().unwrap();
        let durable = self.progress.borrow().flushed;
        let (floors, written) = {
            let mut index = self.index.write().unwrap();
            (index.floors(), index.take_written())
        };
        // The index files are fsynced before the checkpoint says how far they are durable.
        let synced = written
            .dirty
            .iter()
            .try_for_each(|f| f.sync_data())
            .and_then(|()| self.backend.sync_dir());
        let index = match synced {
            Ok(()) => {
                let ids: std::collections::HashMap<u64, u32> =
                    written.id_counts.into_iter().collect();
                let segments = self
                    .segments
                    .read()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        (
                            s.base,
                            s.newest_ms(),
                            ids.get(&s.base).copied().unwrap_or(0),
                        )
                    })
                    .collect();
                Some(IndexCheckpoint {
                    position: written.through,
                    queues: written.queues,
                    segments,
                })
            }
            Err(e) => {
                // The index files are derived data: rather than keep the log checkpoint (or a
                // fence) from being written, record no index position; the next open then
                // rebuilds the index from the whole log.
                tracing::warn!(error = %e, "could not fsync the index files; the next open rebuilds them from the log");
                self.index.write().unwrap().restore_dirty(written.dirty);
                None
            }
        };
        // Every checkpoint written after a failure keeps the fence; `flushed` no longer moves then.
        let fenced = self.check_failed().is_err();
        let payload = StoreCheckpoint {
            durable,
            floors,
            fenced,
            index,
        }
        .encode();
        checkpoint::write_atomic(&*self.backend, STORE_CHECKPOINT, &payload)?;
        if fenced {
            self.fenced.store(true, Ordering::SeqCst);
        }
        self.progress.send_if_modified(|p| {
            let moved = p.checkpointed != durable;
            p.checkpointed = durable;
            moved
        });
        Ok(durable)
    }
}
