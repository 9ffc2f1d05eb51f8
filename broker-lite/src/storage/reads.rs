//! Reading from a [`Store`]: by queue offset or by log position, bounded by what is readable
//! (fsynced under sync flush, written under async flush).

use bytes::Bytes;

use super::codec::{self, HEADER_SIZE, Header};
use super::error::{Result, StorageError};
use super::index::QueueBounds;
use super::record::StoredRecord;
use super::segment::Segment;
use super::shared::Shared;
use super::store::{Store, blocking};

impl Store {
    /// Reads records of one queue from `from_offset` (raised to the queue's first available offset),
    /// at most `max_records` and about `max_bytes` (at least one record when any is readable).
    ///
    /// Only readable records are returned: fsynced ones under sync flush, written ones under async.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] when a record fails its checksum; I/O errors.
    pub async fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        from_offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>> {
        let shared = self.inner.shared.clone();
        let visible = shared.visible();
        let topic = topic.to_string();
        blocking(move || {
            let entries = shared.index.read().unwrap().range(
                &topic,
                queue_id,
                from_offset,
                visible,
                max_records,
                max_bytes,
            )?;
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                // A segment removed by retention meanwhile: its records are gone, skip them.
                let Some(segment) = shared.segment_at(e.position) else {
                    continue;
                };
                let frame = segment.read(e.position, e.size as usize)?;
                out.push(decode_at(&segment, frame, e.position)?);
            }
            Ok(out)
        })
        .await
    }

    /// Reads the record whose frame starts at `log_position`, as returned in [`Appended`](super::Appended) or
    /// [`StoredRecord`]. A position inside a record is reported as corrupt, since it cannot be told
    /// apart from a damaged record.
    ///
    /// # Errors
    /// [`StorageError::NotFound`] when no readable record starts there; [`StorageError::Corrupt`].
    pub async fn read_at(&self, log_position: u64) -> Result<StoredRecord> {
        let shared = self.inner.shared.clone();
        blocking(move || read_record_at(&shared, log_position)).await
    }

    /// The readable offsets of a queue; `None` for a queue that never had a record.
    pub fn queue_bounds(&self, topic: &str, queue_id: u32) -> Option<QueueBounds> {
        let shared = &self.inner.shared;
        let visible = shared.visible();
        shared
            .index
            .read()
            .unwrap()
            .bounds(topic, queue_id, visible)
    }

    /// The log frame sizes of up to `max_records` readable records of a queue from `from_offset`
    /// (not raised: an offset below the queue's first available one gives an empty list). The
    /// broker sizes a pull with it before reading, without touching the disk.
    pub fn record_lens(
        &self,
        topic: &str,
        queue_id: u32,
        from_offset: u64,
        max_records: usize,
    ) -> Vec<u32> {
        let shared = &self.inner.shared;
        let visible = shared.visible();
        let index = shared.index.read().unwrap();
        match index.bounds(topic, queue_id, visible) {
            Some(b) if b.min <= from_offset => index
                .range(
                    topic,
                    queue_id,
                    from_offset,
                    visible,
                    max_records,
                    usize::MAX,
                )
                .unwrap_or_else(|e| {
                    tracing::warn!(topic, queue_id, error = %e, "cannot read the queue index");
                    Vec::new()
                })
                .iter()
                .map(|e| e.size)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every (topic, queue id) that has or had records, sorted.
    pub fn queues(&self) -> Vec<(String, u32)> {
        self.inner.shared.index.read().unwrap().queues()
    }
}

fn decode_at(segment: &Segment, frame: Bytes, position: u64) -> Result<StoredRecord> {
    codec::decode(frame, position).map_err(|reason| StorageError::Corrupt {
        segment: segment.name.clone(),
        offset: position - segment.base,
        position,
        reason: reason.to_string(),
    })
}

/// The record whose frame starts at `log_position`, if it is readable (see [`Store::read_at`]).
pub(super) fn read_record_at(shared: &Shared, log_position: u64) -> Result<StoredRecord> {
    let visible = shared.visible();
    let segment = shared
        .segment_at(log_position)
        .ok_or(StorageError::NotFound(log_position))?;
    let room = segment.end() - log_position;
    if log_position + HEADER_SIZE as u64 > visible || room < 8 {
        return Err(StorageError::NotFound(log_position));
    }
    let head = segment.read(log_position, 8)?;
    let Header::Frame(len) = codec::peek_header(&head, room) else {
        return Err(StorageError::NotFound(log_position));
    };
    if log_position + len as u64 > visible {
        return Err(StorageError::NotFound(log_position));
    }
    let frame = segment.read(log_position, len)?;
    decode_at(&segment, frame, log_position)
}
