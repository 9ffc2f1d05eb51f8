//! The storage error type.

use std::io;

/// A `Result` whose error defaults to [`StorageError`].
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage layer.
///
/// Messages are lower case and say what went wrong and what to do about it.
/// [`StorageError::is_retryable`] tells callers whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O operation on the data directory failed.
    #[error("storage i/o failed while trying to {context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record that should be durable failed its checksum or could not be decoded.
    #[error(
        "corrupt record in segment file {segment} at offset {offset} (log position {position}): {reason}; \
         the data directory needs inspection before the broker can start"
    )]
    Corrupt {
        /// The segment file name.
        segment: String,
        /// The byte offset inside that segment file.
        offset: u64,
        /// The global log position.
        position: u64,
        /// What exactly is wrong.
        reason: String,
    },
    /// A checkpoint file exists but its checksum or format is wrong.
    #[error(
        "checkpoint file {file} is corrupt: {reason}; inspect the data directory or restore it"
    )]
    CorruptCheckpoint {
        /// The file name.
        file: String,
        /// What exactly is wrong.
        reason: String,
    },
    /// The files in the data directory do not form a valid commit log.
    #[error("inconsistent data directory: {0}; inspect the data directory")]
    Inconsistent(String),
    /// A record is larger than the configured maximum.
    #[error(
        "record of {size} bytes exceeds the limit of {limit} bytes (`max_record_size`); send a smaller message"
    )]
    RecordTooLarge {
        /// The encoded size of the record.
        size: usize,
        /// The configured limit.
        limit: u32,
    },
    /// A record field is not valid (empty topic, too long key, ...).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The configuration is not usable.
    #[error("invalid storage configuration: {0}")]
    InvalidConfig(String),
    /// A checkpoint name contains characters that are not allowed.
    #[error("invalid checkpoint name {0:?}: use 1 to 128 ASCII letters, digits, '.', '_' or '-'")]
    InvalidCheckpointName(String),
    /// A previous fsync or write failed; the store refuses all further writes.
    #[error(
        "the store is failed after an earlier write or fsync error ({0}); durability of unflushed records is \
         unknown: restart the broker and inspect the disk"
    )]
    Failed(String),
    /// The record was queued but the writer did not write it within the sync flush timeout.
    #[error(
        "the record was not written within the sync flush timeout; it may still be written later, \
         check disk health"
    )]
    WriteTimeout,
    /// Another store holds the data directory.
    #[error(
        "the data directory {dir} is in use by another store; stop the other broker or choose another directory"
    )]
    Locked {
        /// The directory.
        dir: String,
    },
    /// The store was closed.
    #[error("the store is closed; open it again to continue")]
    Closed,
    /// No record starts at the given log position.
    #[error(
        "no record at log position {0}; the position is out of range or was removed by retention"
    )]
    NotFound(u64),
}

impl StorageError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying the same operation later can succeed.
    ///
    /// ```
    /// use broker_lite::storage::StorageError;
    /// assert!(StorageError::WriteTimeout.is_retryable());
    /// assert!(!StorageError::Closed.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::WriteTimeout | StorageError::Io { .. })
    }
}
