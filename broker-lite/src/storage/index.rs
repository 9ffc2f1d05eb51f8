//! The per-queue index: for every (topic, queue) the log position of each record, by queue offset.
//!
//! The entries live on disk in the queue index files (see `queue_files`); memory holds, per queue,
//! its bounds, its file handles and the newest
//! [`StoreConfig::index_cache_entries`](super::StoreConfig::index_cache_entries) entries, so it is
//! bounded by the number of queues and the configuration, not by how many records are retained.
//! Consumers that keep up read from that cache; older offsets cost one positioned read per file.
//! The writer writes each batch's entries to the files right after placing them; the files are
//! fsynced before each store checkpoint, which records how far they are durable (see
//! `index_open` for what an open trusts and rebuilds).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::backend::{BackendFile, StorageBackend};
use super::error::Result;
use super::id_index::IdIndex;
pub(crate) use super::queue_files::Entry;
use super::queue_files::QueueFiles;

/// The available queue offsets of one queue: `min..max` (`max` is the offset the next record gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// The oldest offset still stored; older ones were removed by retention.
    pub min: u64,
    /// One past the newest readable offset.
    pub max: u64,
}

/// How retention moved the start of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAdvance {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// The first available offset before.
    pub old_min: u64,
    /// The first available offset now; offsets `old_min..new_min` are gone.
    pub new_min: u64,
}

/// One queue in the store checkpoint: its file number and how many entries are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueState {
    pub(crate) topic: String,
    pub(crate) queue_id: u32,
    pub(crate) number: u64,
    pub(crate) next: u64,
}

/// Entries read at a time from the files.
const READ_CHUNK: usize = 1024;

#[derive(Debug)]
pub(crate) struct QueueIndex {
    /// The oldest available offset.
    pub(crate) first: u64,
    /// The offset the next record gets.
    pub(crate) next: u64,
    /// Entries below this offset are in the files.
    pub(crate) written: u64,
    /// The entries of offsets `next - tail.len()..next`.
    pub(crate) tail: VecDeque<Entry>,
    pub(crate) files: QueueFiles,
}

impl QueueIndex {
    pub(crate) fn new(files: QueueFiles, first: u64) -> Self {
        QueueIndex {
            first,
            next: first,
            written: first,
            tail: VecDeque::new(),
            files,
        }
    }

    fn tail_start(&self) -> u64 {
        self.next - self.tail.len() as u64
    }

    /// Entries of `from..to` (inside `first..next`).
    fn entries(&self, from: u64, to: u64) -> Result<Vec<Entry>> {
        let split = self.tail_start().clamp(from, to);
        let mut out = self.files.read(from, (split - from) as usize)?;
        // `split` is below the tail only when `to` is: then nothing comes from the tail.
        let skip = split.saturating_sub(self.tail_start()) as usize;
        out.extend(self.tail.iter().skip(skip).take((to - split) as usize));
        Ok(out)
    }

    /// The first offset of `first..next` whose record ends past `visible`.
    fn visible_end(&self, visible: u64) -> Result<u64> {
        if self.tail.back().is_none_or(|e| e.end() <= visible) {
            return Ok(self.next);
        }
        let start = self.tail_start().max(self.first);
        let skip = (start - self.tail_start()) as usize;
        let in_tail = self
            .tail
            .range(skip..)
            .collect::<Vec<_>>()
            .partition_point(|e| e.end() <= visible) as u64;
        if in_tail > 0 || start == self.first {
            return Ok(start + in_tail);
        }
        self.files.partition_end(self.first, start, visible)
    }

    /// The first offset of `first..next` whose record starts at or past `position`.
    fn start_at(&self, position: u64) -> Result<u64> {
        let start = self.tail_start().max(self.first);
        let skip = (start - self.tail_start()) as usize;
        match self.tail.get(skip) {
            Some(e) if e.position < position || start == self.first => {
                let tail: Vec<_> = self.tail.range(skip..).collect();
                Ok(start + tail.partition_point(|e| e.position < position) as u64)
            }
            None if start == self.first => Ok(start),
            _ => self.files.partition(self.first, start, position),
        }
    }
}

/// All queues.
#[derive(Debug)]
pub(crate) struct Index {
    backend: Arc<dyn StorageBackend>,
    per_file: u64,
    tail_len: usize,
    queues: HashMap<String, HashMap<u32, QueueIndex>>,
    pub(crate) next_number: u64,
    /// Queues with entries not yet in the files.
    touched: Vec<(String, u32)>,
    /// Log position below which every entry is in the files.
    pub(crate) written_through: u64,
    /// Files written since the last checkpoint.
    dirty: Vec<Arc<dyn BackendFile>>,
    /// The message id and key index.
    pub(crate) ids: IdIndex,
}

/// What a checkpoint records of the index files (see [`Index::take_written`]).
#[derive(Debug)]
pub(crate) struct Written {
    /// Log position below which every entry is in the files.
    pub(crate) through: u64,
    pub(crate) queues: Vec<QueueState>,
    /// (segment base, entries) of every id index file.
    pub(crate) id_counts: Vec<(u64, u32)>,
    /// Files to fsync before the checkpoint is written.
    pub(crate) dirty: Vec<Arc<dyn BackendFile>>,
}

impl Index {
    pub(crate) fn new(
        backend: Arc<dyn StorageBackend>,
        per_file: u64,
        tail_len: usize,
        ids: IdIndex,
    ) -> Self {
        Index {
            ids,
            backend,
            per_file,
            tail_len,
            queues: HashMap::new(),
            next_number: 0,
            touched: Vec::new(),
            written_through: 0,
            dirty: Vec::new(),
        }
    }

    /// Adds a queue recovered from its files.
    pub(crate) fn insert(&mut self, topic: &str, queue_id: u32, q: QueueIndex) {
        self.next_number = self.next_number.max(q.files.number + 1);
        self.queues
            .entry(topic.to_string())
            .or_default()
            .insert(queue_id, q);
    }

    fn queue_mut(&mut self, topic: &str, queue_id: u32) -> &mut QueueIndex {
        if !self
            .queues
            .get(topic)
            .is_some_and(|m| m.contains_key(&queue_id))
        {
            let files = QueueFiles::new(self.next_number, self.per_file);
            self.next_number += 1;
            self.insert(topic, queue_id, QueueIndex::new(files, 0));
        }
        self.queues
            .get_mut(topic)
            .unwrap()
            .get_mut(&queue_id)
            .unwrap()
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<&QueueIndex> {
        self.queues.get(topic)?.get(&queue_id)
    }

    /// Appends a new record and returns its queue offset; [`write_pending`](Self::write_pending)
    /// puts it in the files.
    pub(crate) fn push(&mut self, topic: &str, queue_id: u32, entry: Entry) -> u64 {
        let q = self.queue_mut(topic, queue_id);
        let touched = q.written == q.next;
        q.tail.push_back(entry);
        q.next += 1;
        let offset = q.next - 1;
        if touched {
            self.touched.push((topic.to_string(), queue_id));
        }
        offset
    }

    /// Appends a record found while scanning the log. Fails when the offset does not follow.
    pub(crate) fn push_recovered(
        &mut self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        entry: Entry,
    ) -> std::result::Result<(), &'static str> {
        let q = self.queue_mut(topic, queue_id);
        if q.next == q.first {
            q.first = offset;
            q.next = offset;
            q.written = offset;
            q.tail.clear();
        } else if offset != q.next {
            return Err("queue offset does not follow the previous record of its queue");
        }
        self.push(topic, queue_id, entry);
        Ok(())
    }

    /// Writes the entries placed since the last call to the files; `through` is the log position
    /// they all lie below.
    pub(crate) fn write_pending(&mut self, through: u64) -> Result<()> {
        for (topic, queue_id) in std::mem::take(&mut self.touched) {
            let q = self
                .queues
                .get_mut(&topic)
                .unwrap()
                .get_mut(&queue_id)
                .unwrap();
            let skip = (q.written - q.tail_start()) as usize;
            let pending: Vec<Entry> = q.tail.range(skip..).copied().collect();
            q.files
                .write(&*self.backend, q.written, &pending, &mut self.dirty)?;
            q.written = q.next;
            let excess = q.tail.len().saturating_sub(self.tail_len);
            q.tail.drain(..excess);
        }
        self.ids.write_pending()?;
        self.written_through = self.written_through.max(through);
        Ok(())
    }

    /// Registers a queue whose records are all gone (from the store checkpoint).
    pub(crate) fn set_floor(&mut self, topic: &str, queue_id: u32, min: u64) {
        let q = self.queue_mut(topic, queue_id);
        if q.next == q.first && q.first < min {
            q.first = min;
            q.next = min;
            q.written = min;
            q.tail.clear();
        }
    }

    /// Bounds counting only records that end at or below `visible`.
    pub(crate) fn bounds(&self, topic: &str, queue_id: u32, visible: u64) -> Option<QueueBounds> {
        let q = self.queue(topic, queue_id)?;
        let max = q.visible_end(visible).unwrap_or_else(|e| {
            tracing::warn!(topic, queue_id, error = %e, "cannot read the queue index");
            q.first
        });
        Some(QueueBounds { min: q.first, max })
    }

    /// Entries from `from` (raised to the queue start), at most `max_records` and about `max_bytes`
    /// (at least one record if any is visible).
    pub(crate) fn range(
        &self,
        topic: &str,
        queue_id: u32,
        from: u64,
        visible: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Ok(Vec::new());
        };
        let end = q.visible_end(visible)?;
        let mut at = from.max(q.first);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while at < end && out.len() < max_records {
            let n = (end - at).min((max_records - out.len()).min(READ_CHUNK) as u64);
            for e in q.entries(at, at + n)? {
                bytes += e.size as usize;
                if bytes > max_bytes && !out.is_empty() {
                    return Ok(out);
                }
                out.push(e);
            }
            at += n;
        }
        Ok(out)
    }

    /// Drops every entry below log position `position`; reports the queues that moved and the
    /// index files to delete once the checkpoint records the new starts.
    pub(crate) fn remove_before(
        &mut self,
        position: u64,
    ) -> Result<(Vec<QueueAdvance>, Vec<String>)> {
        let moved = self.preview_remove_before(position)?;
        let mut files = Vec::new();
        for a in &moved {
            let q = self.queue_mut(&a.topic, a.queue_id);
            q.first = a.new_min;
            files.extend(q.files.drop_below(a.new_min));
        }
        Ok((moved, files))
    }

    /// What [`remove_before`](Self::remove_before) would report, without changing anything.
    pub(crate) fn preview_remove_before(&self, position: u64) -> Result<Vec<QueueAdvance>> {
        let mut moved = Vec::new();
        for (topic, queues) in &self.queues {
            for (queue_id, q) in queues {
                let new_min = q.start_at(position)?;
                if new_min > q.first {
                    moved.push(QueueAdvance {
                        topic: topic.clone(),
                        queue_id: *queue_id,
                        old_min: q.first,
                        new_min,
                    });
                }
            }
        }
        moved.sort_by(|a, b| (&a.topic, a.queue_id).cmp(&(&b.topic, b.queue_id)));
        Ok(moved)
    }

    /// Every queue, sorted.
    pub(crate) fn queues(&self) -> Vec<(String, u32)> {
        let mut out: Vec<_> = self
            .queues
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |q| (t.clone(), *q)))
            .collect();
        out.sort();
        out
    }

    /// (topic, queue id, first available offset) of every queue, for the store checkpoint.
    pub(crate) fn floors(&self) -> Vec<(String, u32, u64)> {
        self.queues
            .iter()
            .flat_map(|(t, m)| m.iter().map(move |(q, i)| (t.clone(), *q, i.first)))
            .collect()
    }

    /// What the checkpoint records of the files: how far they are written (log position, per
    /// queue, per id index file), with the files written since the last call, which the caller
    /// fsyncs before it writes the checkpoint (and gives back with
    /// [`restore_dirty`](Self::restore_dirty) if that fails).
    pub(crate) fn take_written(&mut self) -> Written {
        let queues = self
            .queues
            .iter()
            .flat_map(|(t, m)| {
                m.iter().map(move |(q, i)| QueueState {
                    topic: t.clone(),
                    queue_id: *q,
                    number: i.files.number,
                    next: i.written,
                })
            })
            .collect();
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.append(&mut self.ids.dirty);
        Written {
            through: self.written_through,
            queues,
            id_counts: self.ids.counts(),
            dirty,
        }
    }

    /// Gives back files whose fsync failed, for the next checkpoint to try again.
    pub(crate) fn restore_dirty(&mut self, files: Vec<Arc<dyn BackendFile>>) {
        self.dirty.extend(files);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::FaultyBackend;

    fn e(position: u64) -> Entry {
        Entry { position, size: 10 }
    }

    fn index(tail: usize) -> Index {
        let backend = Arc::new(FaultyBackend::new());
        let ids = IdIndex::new(backend.clone(), 16, Vec::new());
        Index::new(backend, 2, tail, ids)
    }

    #[test]
    fn offsets_bounds_and_retention() {
        // A cache of one entry per queue: most answers come from the files.
        for tail in [1, 100] {
            let mut ix = index(tail);
            assert_eq!(ix.push("t", 0, e(0)), 0);
            assert_eq!(ix.push("t", 1, e(10)), 0);
            assert_eq!(ix.push("t", 0, e(20)), 1);
            assert_eq!(ix.push("t", 0, e(30)), 2);
            ix.write_pending(40).unwrap();
            assert_eq!(ix.bounds("t", 0, 25), Some(QueueBounds { min: 0, max: 1 }));
            assert_eq!(ix.bounds("t", 0, 40), Some(QueueBounds { min: 0, max: 3 }));
            assert_eq!(
                ix.range("t", 0, 1, 40, 10, 1 << 20).unwrap(),
                vec![e(20), e(30)]
            );
            assert_eq!(ix.range("t", 0, 0, 40, 10, 15).unwrap(), vec![e(0)]);
            let (moved, files) = ix.remove_before(25).unwrap();
            assert_eq!(moved.len(), 2);
            assert_eq!(files, vec![super::super::queue_files::file_name(0, 0)]);
            assert_eq!(ix.bounds("t", 0, 40), Some(QueueBounds { min: 2, max: 3 }));
            assert_eq!(ix.bounds("t", 1, 40), Some(QueueBounds { min: 1, max: 1 }));
            assert_eq!(ix.push("t", 1, e(40)), 1);
            assert_eq!(
                ix.queues(),
                vec![("t".to_string(), 0), ("t".to_string(), 1)]
            );
        }
    }

    #[test]
    fn memory_keeps_only_the_newest_entries_of_each_queue() {
        let mut ix = index(8);
        for i in 0..10_000u64 {
            ix.push("t", (i % 3) as u32, e(i * 10));
            if i % 100 == 99 {
                ix.write_pending(i * 10 + 10).unwrap();
            }
        }
        for q in ix.queues.values().flat_map(|m| m.values()) {
            assert!(q.tail.len() <= 8, "{} entries in memory", q.tail.len());
        }
        // Old offsets come back from the files.
        let old = ix.range("t", 1, 10, u64::MAX, 3, usize::MAX).unwrap();
        assert_eq!(old, vec![e(310), e(340), e(370)]);
        assert_eq!(
            ix.bounds("t", 1, 5000),
            Some(QueueBounds { min: 0, max: 167 })
        );
    }

    #[test]
    fn recovered_offsets_must_follow() {
        let mut ix = index(10);
        ix.push_recovered("t", 0, 5, e(0)).unwrap();
        ix.push_recovered("t", 0, 6, e(10)).unwrap();
        assert!(ix.push_recovered("t", 0, 8, e(20)).is_err());
        ix.set_floor("u", 0, 9);
        assert_eq!(ix.bounds("u", 0, 100), Some(QueueBounds { min: 9, max: 9 }));
    }
}
