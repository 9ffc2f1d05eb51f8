//! The writer thread: the only code that appends to the log.
//!
//! It takes every command waiting in its channel, encodes all their records into one buffer, writes
//! it with one positional write per touched segment and, under sync flush, makes it durable with one
//! fsync (group commit). Producers are told where their records went right after the write and wait
//! for [`Progress::flushed`](super::Progress) to pass them.
//!
//! The segments a batch rolls into are created first ([`Writer::prepare_segments`]), outside the
//! index lock; an append that does not fit because the disk is full is refused on its own.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, END_LEN, END_MAGIC, END_MARKER_SIZE};
use super::config::FlushMode;
use super::error::{Result, StorageError};
use super::index::Entry;
use super::record::{self, NewRecord};
use super::segment::Segment;
use super::shared::Shared;

/// At most this many commands go into one group commit...
const MAX_BATCH: usize = 4096;
/// ...and about this many bytes of records, which bounds the writer's buffer.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Where one record went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    pub(crate) queue_offset: u64,
    pub(crate) log_position: u64,
    /// Log position just past the record.
    pub(crate) end: u64,
}

/// Where the writer sends the places of one append's records.
pub(crate) type PlacedReply = oneshot::Sender<Result<Vec<Placed>>>;

pub(crate) enum Command {
    Append {
        records: Vec<NewRecord>,
        reply: PlacedReply,
    },
    /// Fsync now; `reply` gets the flushed position. The async flusher only wakes the writer with
    /// it (no reply): its requests wait in [`Shared::request_flush`].
    Flush {
        reply: Option<oneshot::Sender<Result<u64>>>,
    },
    /// Fsync, answer, and stop.
    Close { reply: oneshot::Sender<Result<u64>> },
}

impl Command {
    /// Answers `Closed`.
    fn refuse(self) {
        match self {
            Command::Append { reply, .. } => drop(reply.send(Err(StorageError::Closed))),
            Command::Flush { reply: Some(reply) } => drop(reply.send(Err(StorageError::Closed))),
            Command::Flush { reply: None } => {}
            Command::Close { reply } => drop(reply.send(Err(StorageError::Closed))),
        }
    }

    /// Encoded size of the records it carries.
    fn bytes(&self) -> usize {
        match self {
            Command::Append { records, .. } => records.iter().map(NewRecord::encoded_len).sum(),
            _ => 0,
        }
    }
}

impl Drop for Writer {
    /// However the writer stops, nobody waits for it to flush any more.
    fn drop(&mut self) {
        self.shared.stop_flush_requests();
    }
}

/// A run of bytes in the batch buffer bound for one segment.
struct Chunk {
    segment: Arc<Segment>,
    position: u64,
    bytes: Range<usize>,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    /// Log position where the next record goes.
    position: u64,
    buf: BytesMut,
    /// Segments written since their last fsync.
    dirty: Vec<Arc<Segment>>,
    /// Segments created and preallocated for the batch at hand but not yet part of the log; the
    /// next rolls take them in order.
    prepared: VecDeque<Arc<Segment>>,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, position: u64) -> Self {
        let active = shared.segments.read().unwrap().last().unwrap().clone();
        Writer {
            shared,
            active,
            position,
            buf: BytesMut::with_capacity(1 << 20),
            dirty: Vec::new(),
            prepared: VecDeque::new(),
        }
    }

    /// Runs until a `Close` command or until every sender is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.bytes();
            batch.push(first);
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        bytes += cmd.bytes();
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let shared = self.shared.clone();
            let Ok(_open) = shared.open_gate() else {
                // Closed or dropped: answer and stop without touching the files again.
                for cmd in batch.drain(..) {
                    cmd.refuse();
                }
                return;
            };
            if self.process(&mut batch) {
                return;
            }
            if self.buf.capacity() > 2 * MAX_BATCH_BYTES {
                // One huge batch should not pin its buffer for good.
                self.buf = BytesMut::with_capacity(1 << 20);
            }
        }
        // Every handle is gone: flush what we have, as a clean close would.
        let shared = self.shared.clone();
        if let Ok(_open) = shared.open_gate() {
            let _ = self.sync();
            shared.fence_gated();
        }
    }

    /// Handles one batch; returns whether a `Close` was among it.
    fn process(&mut self, batch: &mut Vec<Command>) -> bool {
        let mut appends = Vec::new();
        let mut close = None;
        let mut want_sync = self.shared.config.flush_mode == FlushMode::Sync;
        // Ticks of the async flusher wait here rather than in the queue (see `tasks::flush_task`).
        let mut flushes = self.shared.take_flush_requests();
        want_sync |= !flushes.is_empty();
        for cmd in batch.drain(..) {
            match cmd {
                Command::Append { records, reply } => appends.push((records, reply)),
                Command::Flush { reply } => {
                    want_sync = true;
                    flushes.extend(reply);
                }
                Command::Close { reply } => {
                    want_sync = true;
                    close = Some(reply);
                }
            }
        }

        if let Err(e) = self.shared.check_failed() {
            // The disk may take the fence now that it refused before.
            self.shared.fence_gated();
            for (_, reply) in appends.drain(..) {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
        // Segments are created before the index lock is taken (reads wait for that lock); an
        // append that finds no room on the disk is refused alone and the store stays healthy.
        let fit = self.prepare_segments(&appends);
        if let Err((first_refused, e)) = fit {
            for (_, reply) in appends.drain(first_refused..) {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
        if !appends.is_empty() {
            match self.write(&appends) {
                Ok(placed) => {
                    for ((_, reply), placed) in appends.into_iter().zip(placed) {
                        let _ = reply.send(Ok(placed));
                    }
                }
                Err(e) => {
                    let reason = match e {
                        StorageError::Failed(reason) => reason,
                        other => {
                            let reason = other.to_string();
                            self.shared.fail(reason.clone());
                            reason
                        }
                    };
                    for (_, reply) in appends {
                        let _ = reply.send(Err(StorageError::Failed(reason.clone())));
                    }
                }
            }
        }

        let synced = if want_sync {
            self.sync()
        } else {
            Ok(self.position)
        };
        for reply in flushes {
            let _ = reply.send(clone_result(&synced));
        }
        match close {
            Some(reply) => {
                let _ = reply.send(synced);
                true
            }
            None => false,
        }
    }

    /// Encodes and writes the records of every append; returns their places, per append.
    fn write(&mut self, appends: &[(Vec<NewRecord>, PlacedReply)]) -> Result<Vec<Vec<Placed>>> {
        let stored_ms = record::now_ms();
        let mut chunks = Vec::new();
        let mut new_segments = Vec::new();
        let mut all = Vec::with_capacity(appends.len());
        let mut count = 0u64;
        self.buf.clear();
        let mut chunk_start = (0, self.position);
        {
            let mut index = self.shared.index.write().unwrap();
            for (records, _) in appends {
                let mut placed = Vec::with_capacity(records.len());
                for r in records {
                    let len = r.encoded_len() as u64;
                    if self.position + len > self.active.end() {
                        // Close the current segment with a marker and start the next one.
                        if self.active.end() - self.position >= END_MARKER_SIZE as u64 {
                            self.buf.put_u32_le(END_LEN);
                            self.buf.put_u32_le(END_MAGIC);
                        }
                        chunks.push(self.chunk(chunk_start));
                        // Created by `prepare_segments`: no file I/O under the index lock.
                        let next = self
                            .prepared
                            .pop_front()
                            .expect("prepare_segments created every segment this batch needs");
                        debug_assert_eq!(next.base, self.active.end());
                        tracing::info!(segment = %next.name, "started a new segment");
                        self.active = next;
                        new_segments.push(self.active.clone());
                        self.position = self.active.base;
                        chunk_start = (self.buf.len(), self.position);
                    }
                    let entry = Entry {
                        position: self.position,
                        size: len as u32,
                    };
                    let queue_offset = index.push(&r.topic, r.queue_id, entry);
                    index.ids.add(
                        self.active.base,
                        entry.position,
                        &r.message_id,
                        &r.topic,
                        r.key.as_deref(),
                    )?;
                    codec::encode(r, queue_offset, stored_ms, &mut self.buf);
                    self.position += len;
                    placed.push(Placed {
                        queue_offset,
                        log_position: entry.position,
                        end: self.position,
                    });
                    count += 1;
                }
                all.push(placed);
            }
            // Page-cache writes only; fsynced before the next store checkpoint.
            index.write_pending(self.position)?;
        }
        chunks.push(self.chunk(chunk_start));
        self.shared.segments.write().unwrap().extend(new_segments);
        let sync_mode = self.shared.config.flush_mode == FlushMode::Sync;
        let last = chunks.len() - 1;
        for (k, chunk) in chunks.into_iter().enumerate() {
            let offset = chunk.position - chunk.segment.base;
            if let Err(e) = chunk
                .segment
                .file
                .write_all_at(&self.buf[chunk.bytes.clone()], offset)
            {
                let reason = format!(
                    "write to segment file {} at offset {offset} failed: {e}",
                    chunk.segment.name
                );
                self.shared.fail(reason.clone());
                return Err(StorageError::Failed(reason));
            }
            chunk.segment.note_stored(stored_ms);
            if sync_mode && k < last {
                // Under sync flush a later segment never holds data before everything in the
                // earlier ones is durable; recovery relies on that to tell a torn tail from damage
                // (see `tail`). It costs one more fsync per segment roll.
                self.fsync(&chunk.segment)?;
                self.dirty.retain(|s| !Arc::ptr_eq(s, &chunk.segment));
                continue;
            }
            if !self.dirty.iter().any(|s| Arc::ptr_eq(s, &chunk.segment)) {
                self.dirty.push(chunk.segment);
            }
        }
        let written = self.position;
        // Under sync flush nothing becomes readable before the fsync: update without waking anyone.
        let wake = self.shared.config.flush_mode != FlushMode::Sync;
        self.shared.progress.send_if_modified(|p| {
            p.written = written;
            wake
        });
        // Replication leaders wait on this one (see `Shared::written`).
        self.shared.written.send_replace(written);
        metrics::counter!("broker_lite_storage_appends_total").increment(count);
        metrics::histogram!("broker_lite_storage_batch_records").record(count as f64);
        Ok(all)
    }

    /// Creates (and preallocates, with its fsyncs) every segment the appends will roll into, before
    /// [`write`](Self::write) takes the index lock. On failure, `Err((i, error))`: appends from
    /// `i` on do not fit in the segments that exist; the segments created so far are kept for
    /// later rolls.
    fn prepare_segments(
        &mut self,
        appends: &[(Vec<NewRecord>, PlacedReply)],
    ) -> std::result::Result<(), (usize, StorageError)> {
        let size = self.shared.config.segment_size;
        let mut position = self.position;
        let mut end = self.active.end();
        let mut rolls = 0;
        for (i, (records, _)) in appends.iter().enumerate() {
            for r in records {
                let len = r.encoded_len() as u64;
                if position + len > end {
                    if rolls == self.prepared.len() {
                        let next = Segment::create(&*self.shared.backend, end, size)
                            .map_err(|e| (i, e))?;
                        self.prepared.push_back(Arc::new(next));
                    }
                    rolls += 1;
                    position = end;
                    end += size;
                }
                position += len;
            }
        }
        Ok(())
    }

    fn chunk(&self, (start, position): (usize, u64)) -> Chunk {
        Chunk {
            segment: self.active.clone(),
            position,
            bytes: start..self.buf.len(),
        }
    }

    /// Fsyncs one segment; a failure fails the store.
    fn fsync(&self, segment: &Segment) -> Result<()> {
        metrics::counter!("broker_lite_storage_fsyncs_total").increment(1);
        if let Err(e) = segment.file.sync_data() {
            metrics::counter!("broker_lite_storage_fsync_errors_total").increment(1);
            let reason = format!("fsync of segment file {} failed: {e}", segment.name);
            self.shared.fail(reason.clone());
            return Err(StorageError::Failed(reason));
        }
        Ok(())
    }

    /// Fsyncs every dirty segment and publishes the new flushed position.
    fn sync(&mut self) -> Result<u64> {
        self.shared.check_failed()?;
        let target = self.position;
        for segment in &self.dirty {
            self.fsync(segment)?;
        }
        self.dirty.clear();
        if self.shared.progress.borrow().flushed != target {
            self.shared.progress.send_modify(|p| p.flushed = target);
            metrics::gauge!("broker_lite_storage_flushed_position").set(target as f64);
        }
        Ok(target)
    }
}

/// The same error again, for another waiter of one batch (`StorageError` is not `Clone`).
fn copy_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Failed(reason) => StorageError::Failed(reason.clone()),
        StorageError::Io { context, source } => StorageError::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => StorageError::Failed(other.to_string()),
    }
}

fn clone_result(r: &Result<u64>) -> Result<u64> {
    match r {
        Ok(v) => Ok(*v),
        Err(StorageError::Failed(reason)) => Err(StorageError::Failed(reason.clone())),
        Err(e) => Err(StorageError::Failed(e.to_string())),
    }
}
