//! Store configuration.

use std::time::Duration;

use super::codec::MIN_FRAME_SIZE;
use super::error::{Result, StorageError};

/// When appended records are made durable: the wire type, one definition for the store's
/// configuration and what `Describe` reports.
pub use broker_lite_client::protocol::FlushMode;

/// Configuration of a [`Store`](super::Store).
///
/// ```
/// use std::time::Duration;
/// use broker_lite::storage::{FlushMode, StoreConfig};
///
/// let mut config = StoreConfig::default();
/// config.flush_mode = FlushMode::Async { interval: Duration::from_millis(200) };
/// config.segment_size = 64 * 1024;
/// config.max_record_size = 16 * 1024;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Sync or async flush. Default: [`FlushMode::Sync`].
    pub flush_mode: FlushMode,
    /// Under sync flush, how long an append waits for its fsync before it is answered with
    /// [`FlushOutcome::FlushDiskTimeout`](super::FlushOutcome::FlushDiskTimeout). Default 5 s.
    pub sync_flush_timeout: Duration,
    /// Size of each preallocated segment file. Default 1 GiB.
    pub segment_size: u64,
    /// Largest encoded record accepted. Default 4 MiB. Must fit in a segment.
    pub max_record_size: u32,
    /// How long records are kept (`fileReservedTime`, safeguard B5). Default 72 h.
    pub file_reserved_time: Duration,
    /// Upper bound of the bytes of segment files; older segments are deleted past it. Default: none.
    ///
    /// Must be at least two segments (`2 * segment_size`): with less, every segment but the active
    /// one is over the ceiling, so each segment would be deleted as soon as the log rolls past it,
    /// unconsumed or not. [`validate`](Self::validate) refuses smaller values.
    pub max_disk_usage: Option<u64>,
    /// How often the durable position is checkpointed. Default 1 s.
    pub checkpoint_interval: Duration,
    /// How many append requests may wait for the writer before appends wait for room. Default 4096.
    pub queue_capacity: usize,
    /// Entries per queue index file (16 bytes each). Default 262144 (4 MiB files).
    pub index_file_entries: u64,
    /// Newest queue index entries kept in memory per queue, so that consumers that keep up do not
    /// read the index files. Default 256 (4 KiB per queue).
    pub index_cache_entries: usize,
    /// Whether opening checks every record of the log (reading all of it), not only the tail past
    /// what the index files hold. Default `false`: the open reads only that tail, and damage
    /// further back is reported when a read reaches it ([`StorageError::Corrupt`], naming the
    /// segment and offset), never skipped. Turn it on to find media damage at startup.
    ///
    /// [`StorageError::Corrupt`]: super::StorageError::Corrupt
    pub verify_log_on_open: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            flush_mode: FlushMode::Sync,
            sync_flush_timeout: Duration::from_secs(5),
            segment_size: 1 << 30,
            max_record_size: 4 << 20,
            file_reserved_time: Duration::from_secs(72 * 3600),
            max_disk_usage: None,
            checkpoint_interval: Duration::from_secs(1),
            queue_capacity: 4096,
            index_file_entries: 1 << 18,
            index_cache_entries: 256,
            verify_log_on_open: false,
        }
    }
}

impl StoreConfig {
    /// Checks that the values can work together.
    ///
    /// # Errors
    /// [`StorageError::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(StorageError::InvalidConfig(msg.to_string()));
        if (self.max_record_size as usize) < MIN_FRAME_SIZE {
            return bad("max_record_size is smaller than a record header");
        }
        if self.segment_size < u64::from(self.max_record_size) + 8 {
            return bad("segment_size must exceed max_record_size by at least 8 bytes");
        }
        if let Some(max) = self.max_disk_usage {
            let min = self.segment_size.saturating_mul(2);
            if max < min {
                return Err(StorageError::InvalidConfig(format!(
                    "max_disk_usage is {max} bytes but must be at least two segments \
                     (2 x segment_size = {min} bytes), or retention would delete each segment as \
                     soon as the log rolls past it; raise max_disk_usage or lower segment_size"
                )));
            }
        }
        if let FlushMode::Async { interval } = self.flush_mode {
            if interval.is_zero() {
                return bad("the async flush interval must be greater than zero");
            }
        }
        if self.checkpoint_interval.is_zero() {
            return bad("checkpoint_interval must be greater than zero");
        }
        if self.index_file_entries == 0 || self.index_cache_entries == 0 {
            return bad("index_file_entries and index_cache_entries must be greater than zero");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be greater than zero");
        }
        Ok(())
    }
}
