//! The public face of the storage layer.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use super::backend::{FileBackend, StorageBackend};
use super::checkpoint;
use super::config::{FlushMode, StoreConfig};
use super::error::{Result, StorageError};
use super::flush::{Command, Placed, Writer};
use super::lock::DirLock;
use super::record::NewRecord;
use super::recovery;
use super::retention::{self, RetentionReport};
use super::shared::{Progress, Shared};
use super::tasks;

/// Largest total encoded size of one [`Store::append_batch`] call (64 MiB).
pub const MAX_APPEND_BYTES: usize = 64 << 20;

/// How durable an appended record is when the append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushOutcome {
    /// Fsynced (sync flush). Maps to `SEND_OK`.
    Flushed,
    /// Written to the page cache; the async flusher will fsync it within its interval.
    InMemory,
    /// Written, but not fsynced within `sync_flush_timeout`. It may still become durable; the
    /// producer should treat it as RocketMQ's `FLUSH_DISK_TIMEOUT`.
    FlushDiskTimeout,
}

/// Where an appended record went and how durable it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an append that is not checked may not be durable"]
#[non_exhaustive]
pub struct Appended {
    /// Offset of the record within its queue.
    pub queue_offset: u64,
    /// Global byte position of the record in the commit log.
    pub log_position: u64,
    /// Durability when the append returned.
    pub outcome: FlushOutcome,
}

/// The durable commit log with its per-queue index.
///
/// Cheap to clone; all clones share one writer. See the [module docs](super) for an example.
///
/// Call [`close`](Self::close) to flush and checkpoint. Dropping the last clone without closing
/// behaves like a crash of the store alone: the writer fsyncs what it has, no checkpoint is
/// written, and the drop waits for a write or fsync in progress so that nothing of this store
/// touches the directory after its lock is released.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Released by `close` or drop, after the store shut down its file I/O.
    lock: Mutex<Option<DirLock>>,
}

impl Drop for Inner {
    /// Like a crash of the store alone: no final checkpoint. It waits for a write or fsync in
    /// progress, so that no I/O of this store can follow the release of the directory lock.
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        // A failed store still records its failure, so that the next open does not trust what
        // the page cache shows beyond the last successful fsync.
        self.shared.fence();
        self.shared.shut_down();
    }
}

impl Store {
    /// Opens (or creates) the store in directory `dir` on the local file system.
    ///
    /// # Errors
    /// See [`open_with_backend`](Self::open_with_backend); also [`StorageError::Locked`] when
    /// another store holds the directory.
    pub async fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        config.validate()?;
        let backend = FileBackend::new(dir.as_ref()).map_err(|e| {
            StorageError::io(
                format!("create the data directory {}", dir.as_ref().display()),
                e,
            )
        })?;
        let lock = DirLock::acquire(dir.as_ref())?;
        Self::open_inner(Arc::new(backend), config, Some(lock)).await
    }

    /// Opens the store on `backend`: recovers the log, starts the writer thread and the flush and
    /// checkpoint tasks. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`StorageError::InvalidConfig`]; [`StorageError::Corrupt`] when a record below the durable
    /// position is damaged (the error names the segment file and offset); I/O errors.
    pub async fn open_with_backend(
        backend: Arc<dyn StorageBackend>,
        config: StoreConfig,
    ) -> Result<Store> {
        Self::open_inner(backend, config, None).await
    }

    async fn open_inner(
        backend: Arc<dyn StorageBackend>,
        config: StoreConfig,
        lock: Option<DirLock>,
    ) -> Result<Store> {
        config.validate()?;
        let (shared, position) = tokio::task::spawn_blocking(move || {
            let r = recovery::recover(&backend, &config)?;
            let shared = Arc::new(Shared::new(
                backend, config, r.segments, r.index, r.position,
            ));
            shared.write_checkpoint()?;
            Ok::<_, StorageError>((shared, r.position))
        })
        .await
        .map_err(|e| StorageError::io("recover the commit log", std::io::Error::other(e)))??;
        let (tx, rx) = mpsc::channel(shared.config.queue_capacity);
        let writer = Writer::new(shared.clone(), position);
        std::thread::Builder::new()
            .name("broker-lite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::io("start the writer thread", e))?;
        let mut tasks = vec![tokio::spawn(tasks::checkpoint_task(shared.clone()))];
        if let FlushMode::Async { interval } = shared.config.flush_mode {
            tasks.push(tokio::spawn(tasks::flush_task(
                tx.downgrade(),
                shared.clone(),
                interval,
            )));
        }
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                tx,
                tasks: Mutex::new(tasks),
                lock: Mutex::new(lock),
            }),
        })
    }

    /// Appends one record. See [`append_batch`](Self::append_batch).
    ///
    /// # Errors
    /// As [`append_batch`](Self::append_batch).
    pub async fn append(&self, record: NewRecord) -> Result<Appended> {
        let mut out = self.append_batch(vec![record]).await?;
        Ok(out.pop().unwrap())
    }

    /// Appends records, in order, in one group commit.
    ///
    /// Under [`FlushMode::Sync`] it returns once an fsync covers the records
    /// ([`FlushOutcome::Flushed`]) or when `sync_flush_timeout` has passed
    /// ([`FlushOutcome::FlushDiskTimeout`]); under [`FlushMode::Async`] once they are written
    /// ([`FlushOutcome::InMemory`]).
    ///
    /// # Errors
    /// [`StorageError::RecordTooLarge`] / [`StorageError::InvalidRecord`] (also for a batch over
    /// [`MAX_APPEND_BYTES`]) before anything is written; [`StorageError::Failed`] when a write or fsync failed (now or earlier; the records'
    /// durability is unknown); [`StorageError::WriteTimeout`]; [`StorageError::Closed`].
    ///
    /// # Cancel safety
    /// Not cancel safe: once sent to the writer, the records are written even if the future is
    /// dropped.
    pub async fn append_batch(&self, records: Vec<NewRecord>) -> Result<Vec<Appended>> {
        let deadline = Instant::now() + self.inner.shared.config.sync_flush_timeout;
        let placed = self.place(records, deadline).await?;
        let shared = &self.inner.shared;
        let outcome = match shared.config.flush_mode {
            FlushMode::Sync if !placed.is_empty() => {
                let end = placed.last().map_or(0, |p| p.end);
                let mut progress = shared.progress.subscribe();
                match timeout_at(
                    deadline,
                    progress.wait_for(|p| p.flushed >= end || p.failed),
                )
                .await
                {
                    Err(_) => FlushOutcome::FlushDiskTimeout,
                    Ok(Ok(p)) if p.flushed >= end => FlushOutcome::Flushed,
                    Ok(_) => {
                        shared.check_failed()?;
                        return Err(StorageError::Closed);
                    }
                }
            }
            _ => FlushOutcome::InMemory,
        };
        Ok(appended(placed, outcome))
    }

    /// Appends records, in order, and returns once they are written, without waiting for the
    /// fsync that covers them ([`FlushOutcome::InMemory`] whatever the flush mode): a replication
    /// follower fetches its next records while the writer fsyncs these, and learns when they are
    /// durable from [`progress`](Self::progress) / [`subscribe`](Self::subscribe).
    ///
    /// # Errors
    /// As [`append_batch`](Self::append_batch).
    pub(crate) async fn append_batch_written(
        &self,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>> {
        let deadline = Instant::now() + self.inner.shared.config.sync_flush_timeout;
        let placed = self.place(records, deadline).await?;
        Ok(appended(placed, FlushOutcome::InMemory))
    }

    /// Checks `records` and hands them to the writer; their places once written.
    async fn place(&self, records: Vec<NewRecord>, deadline: Instant) -> Result<Vec<Placed>> {
        let shared = &self.inner.shared;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut total = 0;
        for r in &records {
            total += r.check(shared.config.max_record_size)?;
        }
        if total > MAX_APPEND_BYTES {
            return Err(StorageError::InvalidRecord(format!(
                "a batch of {total} bytes exceeds the limit of {MAX_APPEND_BYTES} bytes per append; split it"
            )));
        }
        shared.check_failed()?;
        let (reply, rx) = oneshot::channel();
        match timeout_at(
            deadline,
            self.inner.tx.send(Command::Append { records, reply }),
        )
        .await
        {
            Err(_) => return Err(StorageError::WriteTimeout),
            Ok(Err(_)) => return Err(StorageError::Closed),
            Ok(Ok(())) => {}
        }
        match timeout_at(deadline, rx).await {
            Err(_) => Err(StorageError::WriteTimeout),
            Ok(Err(_)) => Err(StorageError::Closed),
            Ok(Ok(r)) => r,
        }
    }

    /// A receiver that is notified whenever records become readable (after each write under async
    /// flush, after each fsync under sync flush) and when the store checkpoints or fails;
    /// long-polling readers wait on it and then call [`read_queue`](Self::read_queue) again.
    ///
    /// ```no_run
    /// # async fn f(store: broker_lite::storage::Store) {
    /// let mut progress = store.subscribe();
    /// let _ = progress.changed().await; // new records may be readable now
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.inner.shared.progress.subscribe()
    }

    /// The current write and flush positions.
    pub fn progress(&self) -> Progress {
        *self.inner.shared.progress.borrow()
    }

    /// Fsyncs everything written so far and returns the flushed position.
    ///
    /// # Errors
    /// [`StorageError::Failed`] if the fsync fails (the store is then failed for good);
    /// [`StorageError::Closed`].
    pub async fn flush(&self) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Flush { reply: Some(reply) })
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Deletes old segments by age and disk usage (see [`retention`](super::retention)); returns
    /// what was removed and which queue offsets became unavailable. The broker calls it periodically.
    ///
    /// # Errors
    /// I/O errors while writing the checkpoint or removing files.
    pub async fn enforce_retention(&self, now: SystemTime) -> Result<RetentionReport> {
        self.check_open()?;
        let shared = self.inner.shared.clone();
        blocking(move || retention::enforce(&shared, now)).await
    }

    /// What [`enforce_retention`](Self::enforce_retention) would remove at `now`, without removing
    /// anything. Call it with a time ahead (`now + warning window`) to warn about consumers whose
    /// next offset is below a queue's future `new_min` (safeguard B5).
    pub fn preview_retention(&self, now: SystemTime) -> RetentionReport {
        retention::preview(&self.inner.shared, now)
    }

    /// Atomically stores a small named blob (consumer offsets, for instance).
    ///
    /// # Errors
    /// [`StorageError::InvalidCheckpointName`]; I/O errors (the old content then stays).
    pub async fn save_checkpoint(&self, name: &str, bytes: Bytes) -> Result<()> {
        self.check_open()?;
        let file = checkpoint::user_file_name(name)?;
        let shared = self.inner.shared.clone();
        blocking(move || {
            let _open = shared.open_gate()?;
            checkpoint::write_atomic(&*shared.backend, &file, &bytes)
        })
        .await
    }

    /// Loads a blob saved with [`save_checkpoint`](Self::save_checkpoint); `None` if never saved.
    ///
    /// # Errors
    /// [`StorageError::CorruptCheckpoint`]; [`StorageError::InvalidCheckpointName`]; I/O errors.
    pub async fn load_checkpoint(&self, name: &str) -> Result<Option<Bytes>> {
        self.check_open()?;
        let file = checkpoint::user_file_name(name)?;
        let shared = self.inner.shared.clone();
        blocking(move || checkpoint::load(&*shared.backend, &file)).await
    }

    /// Flushes, checkpoints, stops the writer and releases the directory lock. Later calls fail
    /// with [`StorageError::Closed`].
    ///
    /// # Errors
    /// [`StorageError::Failed`] when the final fsync fails.
    pub async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.inner.tx.send(Command::Close { reply }).await.is_err() {
            return Ok(()); // already closed
        }
        let Ok(flushed) = rx.await else {
            return Ok(()); // closed concurrently
        };
        for task in self.inner.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let shared = self.inner.shared.clone();
        let result = blocking(move || {
            let written = flushed.and_then(|_| shared.write_checkpoint().map(drop));
            shared.shut_down();
            written
        })
        .await;
        self.inner.lock.lock().unwrap().take();
        result
    }

    fn check_open(&self) -> Result<()> {
        self.inner.shared.open_gate().map(drop)
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::io("run a blocking storage task", std::io::Error::other(e)))?
}

fn appended(placed: Vec<Placed>, outcome: FlushOutcome) -> Vec<Appended> {
    placed
        .into_iter()
        .map(|p| Appended {
            queue_offset: p.queue_offset,
            log_position: p.log_position,
            outcome,
        })
        .collect()
}
