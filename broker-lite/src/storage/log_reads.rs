//! Reading the commit log by position, for replication: whole records in log order, up to what
//! is *written* (not only what is durable), whatever limit is set on what consumers see.
//!
//! A leader ships records before its own fsync of them completes, so that the leader's fsync and
//! the follower's run at the same time (Kafka and RocketMQ HA do the same). That is safe because
//! nothing is acknowledged or shown to consumers on the strength of a follower's copy alone: the
//! leader's commit position is at most its own [`durable_position`](Store::durable_position)
//! (see the `replication` module for the rule a follower holding a suffix the leader lost
//! follows).

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
    /// `max_bytes` of them (at least one when any is there), up to what is written (durable or
    /// not yet: see the module docs).
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
    /// assert_eq!(chunk.next_position, store.replicable_position());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StorageError::NotFound`] when `from` is below the first segment kept (retention removed
    /// it: a follower that far behind must be rebuilt); [`StorageError::Corrupt`].
    pub async fn read_log(&self, from: u64, max_bytes: usize) -> Result<LogChunk> {
        let shared = self.inner.shared.clone();
        let end = *shared.written.borrow();
        blocking(move || {
            let mut records = Vec::new();
            let mut bytes = 0usize;
            let mut position = from;
            let mut window = Window::default();
            while position < end && (records.is_empty() || bytes < max_bytes) {
                let Some(segment) = shared.segment_at(position) else {
                    return Err(StorageError::NotFound(position));
                };
                let room = segment.end() - position;
                if room < 8 {
                    position = segment.end();
                    continue;
                }
                // Nothing past `end` is read as a record, so the window stops there too.
                let limit = segment.end().min(end.max(position + 8));
                let head = window.read(&segment, position, 8, limit)?;
                match codec::peek_header(&head, room) {
                    Header::EndOfSegment | Header::Empty => position = segment.end(),
                    Header::Frame(len) => {
                        if position + len as u64 > end {
                            break;
                        }
                        let frame = window.read(&segment, position, len, limit)?;
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

    /// The end of the log that followers may copy: the written end, durable or not (see
    /// [`read_log`](Self::read_log)).
    pub fn replicable_position(&self) -> u64 {
        *self.inner.shared.written.borrow()
    }

    /// The end of what is durable as the flush mode promises: fsynced under sync flush, written
    /// under async flush. Readers other than [`read_log`](Self::read_log) see nothing past it.
    pub fn durable_position(&self) -> u64 {
        self.inner.shared.durable()
    }

    /// A receiver that changes whenever the written end ([`replicable_position`](
    /// Self::replicable_position)) moves, also under sync flush, where [`subscribe`](
    /// Self::subscribe) wakes nobody before the fsync. A replication leader's long-poll waits on
    /// it, so that a follower's fetch returns as soon as new records are written.
    pub fn subscribe_written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.shared.written.subscribe()
    }

    /// The segment size new segments get.
    pub fn segment_size(&self) -> u64 {
        self.inner.shared.config.segment_size
    }
}

/// Bytes of one segment read ahead, so that a fetch costs one read per window rather than two
/// per record (its header, then its frame); records are sliced out of it without a copy.
#[derive(Default)]
struct Window {
    start: u64,
    bytes: bytes::Bytes,
}

impl Window {
    /// The most read ahead at once.
    const MAX: u64 = 1 << 20;

    /// `len` bytes at log `position` of `segment`, reading ahead up to `limit` (exclusive) when
    /// the window does not hold them.
    fn read(
        &mut self,
        segment: &super::segment::Segment,
        position: u64,
        len: usize,
        limit: u64,
    ) -> Result<bytes::Bytes> {
        let held = self.start..self.start + self.bytes.len() as u64;
        if !(held.contains(&position) && position + len as u64 <= held.end) {
            let ahead = (limit.saturating_sub(position))
                .min(Self::MAX)
                .max(len as u64);
            self.bytes = segment.read(position, ahead as usize)?;
            self.start = position;
        }
        let offset = (position - self.start) as usize;
        Ok(self.bytes.slice(offset..offset + len))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewRecord, StoreConfig};
    use super::*;

    /// Reads the whole log in chunks of about `max_bytes`: every record once, in order, at the
    /// position it was appended to, across segment ends.
    async fn read_all(store: &Store, max_bytes: usize) -> Vec<(u64, bytes::Bytes)> {
        let mut out = Vec::new();
        let mut position = 0;
        while position < store.replicable_position() {
            let chunk = store.read_log(position, max_bytes).await.unwrap();
            assert!(chunk.next_position > position || !chunk.records.is_empty());
            out.extend(chunk.records.into_iter().map(|r| (r.log_position, r.body)));
            position = chunk.next_position;
        }
        out
    }

    #[tokio::test]
    async fn chunks_of_any_size_read_every_record_once_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            segment_size: 64 * 1024,
            max_record_size: 16 * 1024,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).await.unwrap();
        let mut appended = Vec::new();
        // Sizes from a few bytes to most of a record's limit, so that segments end with room
        // of every size left and frames straddle where a read-ahead stops.
        for i in 0..400usize {
            let body = bytes::Bytes::from(vec![b'a' + (i % 26) as u8; (i * 37) % 12_000 + 1]);
            let a = store
                .append(NewRecord::new("orders", 0, body.clone()))
                .await
                .unwrap();
            appended.push((a.log_position, body));
        }
        for max_bytes in [1, 100, 5_000, 70_000, 4 << 20] {
            assert_eq!(
                read_all(&store, max_bytes).await,
                appended,
                "max_bytes {max_bytes}"
            );
        }
        store.close().await.unwrap();
    }
}
