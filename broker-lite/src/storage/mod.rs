//! Durable storage: the commit log, its on-disk queue and id indexes, flush and retention.
//!
//! # What is on disk
//!
//! One directory holds (and [`Store::open`] locks it with `flock` on its `LOCK` file, so that
//! two stores never share it):
//! - **segment files** named by the log position of their first byte, 20 digits
//!   (`00000000000000000000`, ...), preallocated to [`StoreConfig::segment_size`] for real
//!   (`fallocate`, not sparse: see *Segments and free space* below). Records are
//!   appended to the last (active) one; each is framed with its length and a CRC32C (the frame
//!   layout is documented in the `codec` module source).
//! - `store.ckpt`, the store checkpoint: the *durable position* (everything below it was fsynced),
//!   the first available offset of every queue, and how far the index files are durable.
//! - `cp-<name>.ckpt`, small blobs saved with [`Store::save_checkpoint`] (consumer offsets).
//!   Checkpoints are replaced atomically: temporary file, fsync, rename, directory fsync.
//! - **queue index files** `cq<queue number>-<first offset>` (like RocketMQ's ConsumeQueue): one
//!   16-byte entry per queue offset (log position, frame size, CRC32C), in files of
//!   [`StoreConfig::index_file_entries`] entries; the `queue_files` module source has the layout.
//! - **id index files** `ix<segment base>` (like RocketMQ's IndexFile), one per segment: a
//!   hash-slot table and chained entries for each record's message id and (topic, key), behind
//!   [`Store::find_by_id`] and [`Store::find_by_key`]; the `id_index` module source has the layout.
//!
//! # Memory and restart
//!
//! Memory does not grow with the number of retained records: per queue it holds the bounds, the
//! file handles and the newest [`StoreConfig::index_cache_entries`] entries; the id index keeps
//! the slot table of the segment being written (one slot per 512 bytes of segment). Reads of
//! older offsets and lookups are positioned reads (no mmap: the crate denies unsafe code).
//!
//! The writer writes each batch's index entries right after placing its records; the index
//! files are fsynced before every store checkpoint, which records how far they are durable. So
//! [`Store::open`] scans only the log tail past that point (plus whatever damaged or missing index
//! files force it to rebuild: see the `index_open` module source) instead of every segment.
//! Opening cuts a torn tail (a partly written last batch, or preallocated zeros) but refuses to
//! start, with [`StorageError::Corrupt`] naming the segment file and offset, when a scanned record
//! below the durable position is damaged: data that was acknowledged is never skipped silently.
//! Damage in the part of the log an open does not scan is reported the same way by the read that
//! reaches it; [`StoreConfig::verify_log_on_open`] makes the open scan (and check) every segment.
//! The durable position is checkpointed every [`StoreConfig::checkpoint_interval`]
//! (default 1 s), on [`Store::close`] and after retention, not after every fsync (that would double
//! the fsyncs). Damage above it is cut only when it is a true torn tail, with nothing valid after
//! it in the log; otherwise opening is refused too, naming segment and offset (under sync flush;
//! the `tail` module source explains the rule and why async flush differs). After a failed fsync
//! the store records a *fence* in its checkpoint, and the next open cuts the log at the last
//! successful fsync, whatever the page cache still shows beyond it ("fsyncgate").
//!
//! # Flushing (safeguards B1, B2)
//!
//! A single writer thread appends. It takes every request waiting for it, writes them with one
//! positional write and, under [`FlushMode::Sync`], covers them all with one fsync (group commit).
//! - **`FlushMode::Sync`** (`SYNC_FLUSH`): an append returns [`FlushOutcome::Flushed`] after the
//!   fsync that covers it, or [`FlushOutcome::FlushDiskTimeout`] after
//!   [`StoreConfig::sync_flush_timeout`] (default 5 s): the record stays written, it is only not
//!   known durable yet. Readers see only fsynced records.
//! - **`FlushMode::Async`** (`ASYNC_FLUSH`): an append returns [`FlushOutcome::InMemory`] once
//!   written to the page cache; a background task fsyncs every `interval` (default 500 ms).
//!   **Loss window:** a power cut or kernel crash loses what was acknowledged during the last
//!   `interval` plus the duration of one fsync, under any load: a tick does not queue behind the
//!   appends (whose queue is full under sustained load) but leaves a flush request that the
//!   writer takes with its very next batch; a crash of the broker process alone loses nothing
//!   that was acknowledged, since the page cache survives it. Readers see written records, so a
//!   consumer may receive a record that is later lost in a power cut.
//!
//! An fsync or write error is fatal: the store enters a failed state (see [`Progress::failed`]),
//! every later append fails with [`StorageError::Failed`], and no pending append is ever answered
//! `Flushed`. Restart the broker and inspect the disk; recovery then decides from the log itself.
//!
//! # Segments and free space
//!
//! A new segment is created, preallocated and fsynced (file and directory) by the writer *before*
//! it takes the index lock, for every roll the batch at hand needs; under the lock the writer only
//! swaps the ready segment in, so readers never wait for that I/O. Because the space is reserved
//! at creation, a full disk shows up there, before any record of the batch is placed: the appends
//! that need the new segment are answered with a retryable [`StorageError::Io`] (kind
//! `StorageFull`), the others of the batch are written, the store is *not* failed, keeps serving
//! reads, and accepts writes again once there is room. (Writes into preallocated space do not
//! run out of room on ext4 or XFS; on copy-on-write file systems a failed write stays fatal.)
//!
//! # Retention (safeguard B5)
//!
//! [`Store::enforce_retention`] deletes whole old segments (with their id index files and the
//! queue index files that only cover removed offsets), never the active one: those whose newest
//! record is older than [`StoreConfig::file_reserved_time`] (default 72 h), and the oldest ones while
//! the segment files exceed [`StoreConfig::max_disk_usage`]. It reports the queues whose first
//! available offset moved; [`Store::queue_bounds`] gives the current `min..max` of a queue, and
//! [`Store::preview_retention`] tells ahead of time which offsets a later pass would remove, so the
//! broker can warn about consumers that are about to lose unconsumed messages.
//!
//! # Backends
//!
//! All I/O goes through a [`backend::StorageBackend`]: [`backend::FileBackend`] for real
//! directories, [`backend::FaultyBackend`] to test crash consistency (lost unsynced writes, torn
//! writes, flipped bits, failing fsync).
//!
//! # Metrics
//!
//! Through the `metrics` facade: `broker_lite_storage_appends_total`,
//! `broker_lite_storage_fsyncs_total`, `broker_lite_storage_fsync_errors_total`,
//! `broker_lite_storage_flushed_position`, `broker_lite_storage_batch_records`,
//! `broker_lite_storage_failures_total`, `broker_lite_storage_retention_removed_segments_total`.
//!
//! # Example
//!
//! ```
//! use broker_lite::storage::{FlushOutcome, NewRecord, Store, StoreConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut config = StoreConfig::default();
//! config.segment_size = 64 * 1024;
//! config.max_record_size = 16 * 1024;
//! let store = Store::open(dir.path(), config).await?;
//!
//! let appended = store.append(NewRecord::new("orders", 0, "order 42 created")).await?;
//! assert_eq!(appended.outcome, FlushOutcome::Flushed);
//! assert_eq!(appended.queue_offset, 0);
//!
//! let records = store.read_queue("orders", 0, 0, 10, 1 << 20).await?;
//! assert_eq!(&records[0].body[..], b"order 42 created");
//! store.close().await?;
//! # Ok(())
//! # }
//! ```

pub mod backend;
mod checkpoint;
mod codec;
mod config;
mod error;
mod flush;
mod id_index;
mod index;
mod index_open;
mod lock;
mod log_reads;
mod lookup;
mod queue_files;
mod reads;
mod record;
mod recovery;
pub mod retention;
mod segment;
mod shared;
mod store;
mod tail;
mod tasks;
mod truncate;

pub use config::{FlushMode, StoreConfig};
pub use error::{Result, StorageError};
pub use index::{QueueAdvance, QueueBounds};
pub use log_reads::LogChunk;
pub use record::{NewRecord, StoredRecord};
pub use retention::RetentionReport;
pub use shared::Progress;
pub use store::{Appended, FlushOutcome, MAX_APPEND_BYTES, Store};
pub use truncate::truncate_log;

/// The record codec for the `record` fuzz target and its corpus test (issue 16); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::{Bytes, BytesMut};

    use super::{NewRecord, StoredRecord, codec};

    /// Decodes one on-disk record frame, as log reads and recovery do.
    pub fn decode_record(frame: Bytes) -> Result<StoredRecord, &'static str> {
        codec::decode(frame, 0)
    }

    /// The on-disk frame of `record`; it must pass the store's size checks.
    pub fn encode_record(record: &NewRecord, queue_offset: u64, stored_ms: u64) -> Bytes {
        let mut buf = BytesMut::new();
        codec::encode(record, queue_offset, stored_ms, &mut buf);
        buf.freeze()
    }
}
