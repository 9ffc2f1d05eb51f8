//! Opening the log: scan the log tail past what the index files hold (see `index_open`; every
//! segment under [`StoreConfig::verify_log_on_open`]), rebuild the index from it, cut a torn tail.
//!
//! The scan stops at the first position that does not hold a valid record (zeros, a bad length, a
//! checksum mismatch, a queue offset that does not follow). If that position is below the durable
//! position of the store checkpoint, data that was fsynced is damaged and opening fails with
//! [`StorageError::Corrupt`]. Above it, the stop must be a true torn tail (checked by
//! [`tail::check_torn_tail`]): then the rest of that segment is zeroed (and preallocated again) and
//! later segments are removed. A checkpoint fenced after a failed fsync stops the scan at its
//! durable position and cuts there (see the [`tail`] module).

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::backend::StorageBackend;
use super::checkpoint::{self, STORE_CHECKPOINT, StoreCheckpoint, TMP_SUFFIX};
use super::codec::{self, END_MARKER_SIZE, Header};
use super::config::StoreConfig;
use super::error::{Result, StorageError};
use super::index::{Entry, Index};
use super::index_open;
use super::segment::{Segment, parse_segment_name};
use super::tail;

/// Bytes read at a time while scanning.
pub(super) const SCAN_CHUNK: u64 = 1 << 20;

pub(crate) struct Recovered {
    pub(crate) segments: Vec<Arc<Segment>>,
    pub(crate) index: Index,
    /// End of the valid log: where the next record goes.
    pub(crate) position: u64,
}

pub(crate) fn recover(
    backend_arc: &Arc<dyn StorageBackend>,
    config: &StoreConfig,
) -> Result<Recovered> {
    let backend = &**backend_arc;
    let names = backend
        .list()
        .map_err(|e| StorageError::io("list the data directory", e))?;
    for tmp in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
        tracing::debug!(file = %tmp, "removing a leftover temporary file");
        let _ = backend.remove(tmp);
    }
    let checkpoint = match checkpoint::load(backend, STORE_CHECKPOINT)? {
        Some(bytes) => {
            StoreCheckpoint::decode(&bytes).ok_or_else(|| StorageError::CorruptCheckpoint {
                file: STORE_CHECKPOINT.to_string(),
                reason: "payload does not decode".to_string(),
            })?
        }
        None => StoreCheckpoint::default(),
    };
    let durable = checkpoint.durable;

    let mut bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort_unstable();
    let mut segments = Vec::with_capacity(bases.len());
    for base in bases {
        let name = super::segment::segment_name(base);
        let mut segment = Segment::open(backend, &name, base)?;
        if segment.size == 0 {
            // Created but never preallocated: nothing in it can matter.
            segment = Segment::create(backend, base, config.segment_size)?;
        }
        segments.push(segment);
    }
    if segments.is_empty() {
        if durable > 0 {
            return Err(StorageError::Inconsistent(format!(
                "the checkpoint says {durable} bytes are durable but there is no segment file"
            )));
        }
        segments.push(Segment::create(backend, 0, config.segment_size)?);
    }
    for pair in segments.windows(2) {
        if pair[0].end() != pair[1].base {
            return Err(StorageError::Inconsistent(format!(
                "segment file {} ends at log position {} but the next file is {}",
                pair[0].name,
                pair[0].end(),
                pair[1].name
            )));
        }
    }

    let opened = index_open::open(backend_arc, config, &checkpoint, &segments, &names)?;
    let mut index = opened.index;
    let indexed_from = opened.start;
    let scan_from = match config.verify_log_on_open {
        true => segments[0].base,
        false => indexed_from,
    };
    let mut records = 0u64;
    // After a failed fsync nothing beyond the durable position is trusted (see `tail`).
    let trusted_end = checkpoint.fenced.then_some(durable);
    let mut stop = None;
    'segments: for (i, segment) in segments.iter().enumerate() {
        if segment.end() <= scan_from && i + 1 < segments.len() {
            continue;
        }
        let mut scanner = Scanner::new(segment);
        let mut pos = segment.base.max(scan_from);
        while segment.end() - pos >= END_MARKER_SIZE as u64 {
            if trusted_end.is_some_and(|end| pos >= end) {
                stop = Some((i, pos, Stop::Untrusted));
                break 'segments;
            }
            let head = scanner.get(pos, END_MARKER_SIZE)?;
            let len = match codec::peek_header(&head, segment.end() - pos) {
                Header::Empty => {
                    stop = Some((i, pos, Stop::Zeros));
                    break 'segments;
                }
                Header::EndOfSegment => break,
                Header::Invalid(reason) => {
                    stop = Some((i, pos, Stop::Damaged(reason)));
                    break 'segments;
                }
                Header::Frame(len) => len,
            };
            let frame = scanner.get(pos, len)?;
            let found = codec::decode(frame, pos).and_then(|r| {
                segment.note_stored(r.stored_timestamp_ms);
                if pos < indexed_from {
                    return Ok(None);
                }
                let entry = Entry {
                    position: pos,
                    size: len as u32,
                };
                index.push_recovered(&r.topic, r.queue_id, r.queue_offset, entry)?;
                Ok(Some(r))
            });
            match found {
                Err(reason) => {
                    stop = Some((i, pos, Stop::Damaged(reason)));
                    break 'segments;
                }
                Ok(Some(r)) => {
                    index
                        .ids
                        .add(segment.base, pos, &r.message_id, &r.topic, r.key.as_deref())?;
                    records += 1;
                    if records % 4096 == 0 {
                        index.write_pending(pos)?;
                    }
                }
                Ok(None) => {}
            }
            pos += len as u64;
        }
    }

    let last = segments.len() - 1;
    let position = match stop {
        None => segments[last].end(),
        Some((i, pos, kind)) => {
            let segment = &segments[i];
            let offset = pos - segment.base;
            if pos < durable {
                return Err(StorageError::Corrupt {
                    segment: segment.name.clone(),
                    offset,
                    position: pos,
                    reason: format!("{}, below the durable position {durable}", kind.reason()),
                });
            }
            match kind {
                Stop::Untrusted => tracing::warn!(
                    segment = %segment.name, offset, position = pos,
                    removed_segments = last - i,
                    "cutting the log at the last successfully fsynced position: an fsync or write \
                     failed before the last shutdown, so what follows is not trusted"
                ),
                Stop::Zeros | Stop::Damaged(_) => {
                    tail::check_torn_tail(&segments, i, pos, kind.reason(), config)?;
                    if matches!(kind, Stop::Damaged(_)) {
                        tracing::warn!(
                            segment = %segment.name, offset, position = pos, reason = kind.reason(),
                            removed_segments = last - i,
                            "cutting a torn tail that was never acknowledged as durable"
                        );
                    }
                }
            }
            let ctx = |e| {
                StorageError::io(
                    format!("cut the torn tail of segment file {}", segment.name),
                    e,
                )
            };
            segment.file.set_len(offset).map_err(ctx)?;
            // Allocate again rather than extend: an extended tail would be sparse.
            segment.file.allocate(segment.size).map_err(ctx)?;
            segment.file.sync_data().map_err(ctx)?;
            for later in segments.drain(i + 1..) {
                backend.remove(&later.name).map_err(|e| {
                    StorageError::io(format!("remove segment file {}", later.name), e)
                })?;
            }
            backend
                .sync_dir()
                .map_err(|e| StorageError::io("sync the data directory", e))?;
            pos
        }
    };
    if position < durable {
        return Err(StorageError::Inconsistent(format!(
            "the log ends at position {position} but the checkpoint says {durable} bytes are durable"
        )));
    }
    // Whatever survived is made durable before anyone is told about it.
    for segment in segments.iter().filter(|s| s.end() > durable) {
        segment
            .file
            .sync_data()
            .map_err(|e| StorageError::io(format!("fsync segment file {}", segment.name), e))?;
    }
    index.write_pending(position)?;
    for (topic, queue_id, min) in &checkpoint.floors {
        index.set_floor(topic, *queue_id, *min);
    }
    tracing::info!(
        segments = segments.len(),
        indexed_from,
        records,
        position,
        durable,
        "commit log recovered"
    );
    Ok(Recovered {
        segments: segments.into_iter().map(Arc::new).collect(),
        index,
        position,
    })
}

/// Why the scan of the log stopped before its end.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Zeros where a record should start: the end of what was written.
    Zeros,
    /// Not a valid record.
    Damaged(&'static str),
    /// The fenced durable position of a store that failed (see [`tail`]).
    Untrusted,
}

impl Stop {
    fn reason(self) -> &'static str {
        match self {
            Stop::Zeros => "no record where one was expected (zeros)",
            Stop::Damaged(reason) => reason,
            Stop::Untrusted => "written after the last successful fsync of a store that failed",
        }
    }
}

/// Reads a segment in large chunks.
pub(super) struct Scanner<'a> {
    segment: &'a Segment,
    start: u64,
    chunk: Bytes,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(segment: &'a Segment) -> Self {
        Scanner {
            segment,
            start: segment.base,
            chunk: Bytes::new(),
        }
    }

    /// `len` bytes at log position `pos`, which the caller keeps inside the segment.
    pub(super) fn get(&mut self, pos: u64, len: usize) -> Result<Bytes> {
        let chunk_end = self.start + self.chunk.len() as u64;
        if pos < self.start || pos + len as u64 > chunk_end {
            let want = (len as u64).max(SCAN_CHUNK).min(self.segment.end() - pos);
            self.chunk = self.segment.read(pos, want as usize).map_err(|e| match e {
                StorageError::Io { source, .. }
                    if source.kind() == io::ErrorKind::UnexpectedEof =>
                {
                    StorageError::Inconsistent(format!(
                        "segment file {} is shorter than expected",
                        self.segment.name
                    ))
                }
                other => other,
            })?;
            self.start = pos;
        }
        let from = (pos - self.start) as usize;
        Ok(self.chunk.slice(from..from + len))
    }

    /// The bytes from log position `pos` to the end of the chunk that holds it (at least one).
    pub(super) fn rest(&mut self, pos: u64) -> Result<Bytes> {
        self.get(pos, 1)?;
        let from = (pos - self.start) as usize;
        Ok(self.chunk.slice(from..))
    }
}
