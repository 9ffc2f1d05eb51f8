//! Reading the commit log by position, for replication: whole records in log order, bounded by
//! what is durable (fsynced under sync flush, written under async), whatever limit is set on what
//! consumers see.

use std::sync::atomic::Ordering;

use super::codec::{self, Header};
use super::error::{Result, StorageError};
use super::record::StoredRecord;
use super::store::{Store, blocking};

/// Records read with [`Store::read_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogChunk {
    /// Records in log order.
    pub records: Vec<StoredRecord>,
    /// Where the next read continues: past the last record, or at the next segment's start when a
    /// segment ended.
    pub next_position: u64,
}

impl Store {
    /// Reads whole records from log position `from` (a record start or a segment end), about
    /// `max_bytes` of them (at least one when any is there), up to what is durable.
    ///
    /// ```
    /// # use broker_lite::storage::{NewRecord, Store, StoreConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let mut config = StoreConfig::default();
    /// # config.segment_size = 64 * 1024;
    /// # config.max_record_size = 16 * 1024;
    /// let store = Store::open(dir.path(), config).await?;
    /// let first = store.append(NewRecord::new("orders", 0, "a")).await?;
    /// store.append(NewRecord::new("orders", 1, "b")).await?;
    /// let chunk = store.read_log(first.log_position, 1 << 20).await?;
    /// assert_eq!(chunk.records.len(), 2);
    /// assert_eq!(chunk.next_position, store.progress().flushed);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StorageError::NotFound`] when `from` is below the first segment kept (retention removed
    /// it: a follower that far behind must be rebuilt); [`StorageError::Corrupt`].
    pub async fn read_log(&self, from: u64, max_bytes: usize) -> Result<LogChunk> {
        let shared = self.inner.shared.clone();
        let end = shared.replicable();
        blocking(move || {
            let mut records = Vec::new();
            let mut bytes = 0usize;
            let mut position = from;
            while position < end && (records.is_empty() || bytes < max_bytes) {
                let Some(segment) = shared.segment_at(position) else {
                    return Err(StorageError::NotFound(position));
                };
                let room = segment.end() - position;
                if room < 8 {
                    position = segment.end();
                    continue;
                }
                let head = segment.read(position, 8)?;
                match codec::peek_header(&head, room) {
                    Header::EndOfSegment | Header::Empty => position = segment.end(),
                    Header::Frame(len) => {
                        if position + len as u64 > end {
                            break;
                        }
                        let frame = segment.read(position, len)?;
                        let record = codec::decode(frame, position).map_err(|reason| {
                            StorageError::Corrupt {
                                segment: segment.name.clone(),
                                offset: position - segment.base,
                                position,
                                reason: reason.to_string(),
                            }
                        })?;
                        bytes += len;
                        position += len as u64;
                        records.push(record);
                    }
                    Header::Invalid(reason) => {
                        return Err(StorageError::Corrupt {
                            segment: segment.name.clone(),
                            offset: position - segment.base,
                            position,
                            reason: reason.to_string(),
                        });
                    }
                }
            }
            Ok(LogChunk {
                records,
                next_position: position.min(end.max(from)),
            })
        })
        .await
    }

    /// Hides records at or past `limit` from every reader but [`read_log`](Self::read_log)
    /// (`u64::MAX`: no limit) and wakes long-polling readers. A `SYNC_MASTER` leader sets it to
    /// its replication commit position, so that consumers only see replicated records.
    pub fn set_visible_limit(&self, limit: u64) {
        let shared = &self.inner.shared;
        let old = shared.visible_limit.swap(limit, Ordering::AcqRel);
        if old != limit {
            shared.progress.send_modify(|_| {});
        }
    }

    /// The durable end of the log that followers may copy (see [`read_log`](Self::read_log)).
    pub fn replicable_position(&self) -> u64 {
        self.inner.shared.replicable()
    }

    /// The segment size new segments get.
    pub fn segment_size(&self) -> u64 {
        self.inner.shared.config.segment_size
    }
}
