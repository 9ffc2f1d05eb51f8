//! The on-disk files of one queue's index, like RocketMQ's ConsumeQueue: fixed-size entries
//! (log position, frame size, checksum), one per queue offset, in files of
//! [`StoreConfig::index_file_entries`](super::StoreConfig::index_file_entries) entries each.
//!
//! A file is named `cq<queue number, 10 digits>-<queue offset of its first slot, 20 digits>`; the
//! queue number maps to (topic, queue id) through the store checkpoint (topics may be 65534 bytes
//! long, too long for a file name). Slot `k` of the file starting at offset `f` holds offset
//! `f + k`, at byte `16 k`. Files are aligned to multiples of the entries per file, so any offset
//! maps to one file; a queue that starts past a file's first slot leaves zeros before it.
//!
//! The entry checksum covers the queue offset too, so a zeroed, torn or misplaced entry is told
//! apart from a real one. Reads are positioned reads (no mmap: the crate denies unsafe code).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::backend::{BackendFile, StorageBackend};
use super::error::{Result, StorageError};

/// Bytes of one entry on disk.
pub(crate) const ENTRY_SIZE: u64 = 16;

/// Where one record of a queue is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) position: u64,
    pub(crate) size: u32,
}

impl Entry {
    /// Log position just past the record.
    pub(crate) fn end(&self) -> u64 {
        self.position + u64::from(self.size)
    }

    fn checksum(&self, offset: u64) -> u32 {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.position.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..].copy_from_slice(&offset.to_le_bytes());
        crc32c::crc32c(&b)
    }

    pub(crate) fn encode(&self, offset: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.checksum(offset).to_le_bytes());
    }

    /// The entry for queue offset `offset`, or `None` for zeros, a torn write or another offset's.
    pub(crate) fn decode(b: &[u8], offset: u64) -> Option<Entry> {
        let entry = Entry {
            position: u64::from_le_bytes(b[..8].try_into().ok()?),
            size: u32::from_le_bytes(b[8..12].try_into().ok()?),
        };
        let crc = u32::from_le_bytes(b[12..16].try_into().ok()?);
        (entry.size > 0 && crc == entry.checksum(offset)).then_some(entry)
    }
}

/// The file name for queue `number`'s file whose first slot is offset `first`.
pub(crate) fn file_name(number: u64, first: u64) -> String {
    format!("cq{number:010}-{first:020}")
}

/// (queue number, first slot offset) of a queue index file name.
pub(crate) fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("cq")?;
    let (number, first) = rest.split_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(number, 10) || !digits(first, 20) {
        return None;
    }
    Some((number.parse().ok()?, first.parse().ok()?))
}

#[derive(Debug)]
struct File {
    name: String,
    handle: Arc<dyn BackendFile>,
}

/// The index files of one queue.
#[derive(Debug)]
pub(crate) struct QueueFiles {
    pub(crate) number: u64,
    per_file: u64,
    files: BTreeMap<u64, File>,
}

impl QueueFiles {
    pub(crate) fn new(number: u64, per_file: u64) -> Self {
        QueueFiles {
            number,
            per_file,
            files: BTreeMap::new(),
        }
    }

    /// Adds an existing file found in the data directory.
    pub(crate) fn attach(&mut self, backend: &dyn StorageBackend, first: u64) -> Result<()> {
        let name = file_name(self.number, first);
        let handle = backend
            .open(&name, false)
            .map_err(|e| StorageError::io(format!("open queue index file {name}"), e))?;
        self.files.insert(first, File { name, handle });
        Ok(())
    }

    fn file_start(&self, offset: u64) -> u64 {
        offset - offset % self.per_file
    }

    /// Writes `entries` for offsets `from..`, one positioned write per file; every file written
    /// is added to `dirty` (fsynced at the next checkpoint).
    pub(crate) fn write(
        &mut self,
        backend: &dyn StorageBackend,
        from: u64,
        entries: &[Entry],
        dirty: &mut Vec<Arc<dyn BackendFile>>,
    ) -> Result<()> {
        let mut offset = from;
        let mut rest = entries;
        let mut buf = Vec::new();
        while !rest.is_empty() {
            let start = self.file_start(offset);
            let room = (start + self.per_file - offset) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            if !self.files.contains_key(&start) {
                let name = file_name(self.number, start);
                let handle = backend
                    .open(&name, true)
                    .map_err(|e| StorageError::io(format!("create queue index file {name}"), e))?;
                self.files.insert(start, File { name, handle });
            }
            let file = &self.files[&start];
            buf.clear();
            for (k, e) in now.iter().enumerate() {
                e.encode(offset + k as u64, &mut buf);
            }
            file.handle
                .write_all_at(&buf, (offset - start) * ENTRY_SIZE)
                .map_err(|e| {
                    StorageError::io(format!("write queue index file {}", file.name), e)
                })?;
            if !dirty.iter().any(|d| Arc::ptr_eq(d, &file.handle)) {
                dirty.push(file.handle.clone());
            }
            offset += now.len() as u64;
            rest = later;
        }
        Ok(())
    }

    /// `count` entries from offset `from`, all of which must be there and valid.
    pub(crate) fn read(&self, from: u64, count: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(count);
        let mut offset = from;
        let end = from + count as u64;
        while offset < end {
            let start = self.file_start(offset);
            let n = (start + self.per_file).min(end) - offset;
            let missing = || {
                StorageError::Inconsistent(format!(
                    "the queue index file {} holding queue offset {offset} is missing; remove the \
                 queue index files (cq*) and the store checkpoint's index is rebuilt from the log",
                    file_name(self.number, start)
                ))
            };
            let file = self.files.get(&start).ok_or_else(missing)?;
            let mut buf = vec![0u8; (n * ENTRY_SIZE) as usize];
            file.handle
                .read_exact_at(&mut buf, (offset - start) * ENTRY_SIZE)
                .map_err(|e| StorageError::io(format!("read queue index file {}", file.name), e))?;
            for (k, b) in buf.chunks_exact(ENTRY_SIZE as usize).enumerate() {
                let at = offset + k as u64;
                let entry = Entry::decode(b, at).ok_or_else(|| StorageError::Corrupt {
                    segment: file.name.clone(),
                    offset: (at - start) * ENTRY_SIZE,
                    position: at,
                    reason: format!(
                        "the queue index entry of queue offset {at} is damaged; stop the broker \
                         and remove the queue index files (cq*): they are rebuilt from the log"
                    ),
                })?;
                out.push(entry);
            }
            offset += n;
        }
        Ok(out)
    }

    /// The entry of `offset`, `None` when missing or invalid (used while checking on open).
    pub(crate) fn try_read(&self, offset: u64) -> Option<Entry> {
        self.read(offset, 1).ok().map(|v| v[0])
    }

    /// How many entries from `first` on are present by the file lengths, without gaps.
    pub(crate) fn present(&self, first: u64) -> u64 {
        let mut offset = first;
        loop {
            let start = self.file_start(offset);
            let Some(file) = self.files.get(&start) else {
                return offset - first;
            };
            let len = file.handle.len().unwrap_or(0) / ENTRY_SIZE;
            let end = start + len.min(self.per_file);
            if end <= offset {
                return offset - first;
            }
            offset = end;
            if end < start + self.per_file {
                return offset - first;
            }
        }
    }

    /// The first offset in `lo..hi` whose entry starts at or past `position` (entries are in log
    /// order); `hi` when none does.
    pub(crate) fn partition(&self, lo: u64, hi: u64, position: u64) -> Result<u64> {
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.read(mid, 1)?[0].position < position {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Like [`partition`](Self::partition) by the end of the records: the first offset whose
    /// record ends past `visible`.
    pub(crate) fn partition_end(&self, lo: u64, hi: u64, visible: u64) -> Result<u64> {
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.read(mid, 1)?[0].end() <= visible {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Keeps only the entries below `next`: cuts the file holding it and removes later files.
    pub(crate) fn truncate(&mut self, backend: &dyn StorageBackend, next: u64) -> Result<()> {
        let start = self.file_start(next);
        let later: Vec<u64> = self.files.range(start..).map(|(k, _)| *k).collect();
        for first in later {
            if first == start && next > start {
                let file = &self.files[&first];
                file.handle
                    .set_len((next - start) * ENTRY_SIZE)
                    .map_err(|e| {
                        StorageError::io(format!("cut queue index file {}", file.name), e)
                    })?;
                continue;
            }
            let file = self.files.remove(&first).unwrap();
            backend.remove(&file.name).map_err(|e| {
                StorageError::io(format!("remove queue index file {}", file.name), e)
            })?;
        }
        Ok(())
    }

    /// Forgets the files holding only offsets below `first` and returns their names, for the
    /// caller to delete once the checkpoint no longer needs them.
    pub(crate) fn drop_below(&mut self, first: u64) -> Vec<String> {
        let doomed: Vec<u64> = self
            .files
            .keys()
            .copied()
            .filter(|start| start + self.per_file <= first)
            .collect();
        doomed
            .into_iter()
            .map(|k| self.files.remove(&k).unwrap().name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::FaultyBackend;

    fn e(position: u64) -> Entry {
        Entry { position, size: 10 }
    }

    #[test]
    fn entries_check_their_offset() {
        let mut b = Vec::new();
        e(40).encode(7, &mut b);
        assert_eq!(Entry::decode(&b, 7), Some(e(40)));
        assert_eq!(Entry::decode(&b, 8), None);
        assert_eq!(Entry::decode(&[0; 16], 0), None);
        assert_eq!(parse_file_name(&file_name(3, 64)), Some((3, 64)));
        assert_eq!(parse_file_name("00000000000000000000"), None);
    }

    #[test]
    fn writes_span_files_and_truncate_cuts_them() {
        let backend = FaultyBackend::new();
        let mut q = QueueFiles::new(1, 4);
        let mut dirty = Vec::new();
        let entries: Vec<Entry> = (0..10).map(|i| e(i * 10)).collect();
        q.write(&backend, 2, &entries, &mut dirty).unwrap();
        assert_eq!(dirty.len(), 3);
        assert_eq!(q.read(2, 10).unwrap(), entries);
        assert_eq!(q.present(2), 10);
        assert_eq!(q.partition(2, 12, 35).unwrap(), 6);
        assert_eq!(q.partition_end(2, 12, 35).unwrap(), 5);
        q.truncate(&backend, 5).unwrap();
        assert_eq!(q.present(2), 3);
        assert!(q.read(4, 2).is_err());
        assert_eq!(q.drop_below(4), vec![file_name(1, 0)]);
    }
}
