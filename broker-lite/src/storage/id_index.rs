//! The message id and key index, like RocketMQ's IndexFile: one file per log segment,
//! `ix<segment base, 20 digits>`, holding a hash-slot table and entries chained by slot, so a
//! lookup reads a slot and follows its chain with positioned reads instead of keeping a map of
//! every message in memory.
//!
//! Layout: a 16-byte header (magic `BIX1`, slot count, sealed flag, reserved), `slots` slots of
//! 4 bytes (the number + 1 of the newest entry of that slot, 0 for none), then 24-byte entries in
//! log order: the 64-bit hash of the message id or of (topic, key), the record's log position,
//! the number + 1 of the previous entry of its slot (its top bit marks a key entry) and a CRC32C
//! over those and the entry's number.
//!
//! Only the file of the segment being written keeps its slot table in memory
//! ([`slots_for`] of the segment size: bounded by configuration); it is written to the file, and
//! the file marked sealed, when the log rolls to the next segment. Hashes can collide: callers
//! read the record at each candidate position and compare its id or key.

use std::sync::Arc;

use uuid::Uuid;

use super::backend::{BackendFile, StorageBackend};
use super::error::{Result, StorageError};

const MAGIC: &[u8; 4] = b"BIX1";
pub(crate) const HEADER: u64 = 16;
pub(crate) const ENTRY: u64 = 24;
const KEY_FLAG: u32 = 1 << 31;

/// Slots per file for segments of `segment_size` bytes: one per 512 bytes of log.
pub(crate) fn slots_for(segment_size: u64) -> u32 {
    (segment_size / 512).clamp(256, 1 << 22) as u32
}

fn fnv(kind: u8, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(&kind).chain(parts.iter().flat_map(|p| p.iter())) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The hash a message id is indexed under.
pub(crate) fn id_hash(id: &Uuid) -> u64 {
    fnv(b'i', &[id.as_bytes()])
}

/// The hash a (topic, key) is indexed under.
pub(crate) fn key_hash(topic: &str, key: &str) -> u64 {
    fnv(b'k', &[topic.as_bytes(), &[0xff], key.as_bytes()])
}

pub(crate) fn file_name(base: u64) -> String {
    format!("ix{base:020}")
}

pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let d = name.strip_prefix("ix")?;
    (d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
        .then(|| d.parse().ok())
        .flatten()
}

/// One entry of an id index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdEntry {
    pub(crate) hash: u64,
    pub(crate) position: u64,
    /// Number + 1 of the previous entry of the same slot; 0 for none.
    pub(crate) prev: u32,
    pub(crate) key: bool,
}

impl IdEntry {
    fn encode(&self, number: u32, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.hash.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        let flags = self.prev | if self.key { KEY_FLAG } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..]), &number.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
    }

    pub(crate) fn decode(b: &[u8], number: u32) -> Option<IdEntry> {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..20]), &number.to_le_bytes());
        if crc != u32::from_le_bytes(b[20..24].try_into().ok()?) {
            return None;
        }
        let flags = u32::from_le_bytes(b[16..20].try_into().ok()?);
        Some(IdEntry {
            hash: u64::from_le_bytes(b[..8].try_into().ok()?),
            position: u64::from_le_bytes(b[8..16].try_into().ok()?),
            prev: flags & !KEY_FLAG,
            key: flags & KEY_FLAG != 0,
        })
    }
}

/// One id index file.
#[derive(Debug)]
pub(crate) struct IdFile {
    /// Base of its log segment.
    pub(crate) base: u64,
    pub(crate) name: String,
    pub(crate) handle: Arc<dyn BackendFile>,
    pub(crate) slots: u32,
    /// Entries in the file (or placed, for the active file).
    pub(crate) count: u32,
    /// The slot table, for the active file only; sealed files read theirs from disk.
    pub(crate) table: Option<Vec<u32>>,
    /// Encoded entries not yet written (active file).
    pending: Vec<u8>,
}

impl IdFile {
    fn entries_at(&self) -> u64 {
        HEADER + u64::from(self.slots) * 4
    }

    /// Creates an empty file, durably named at the next checkpoint.
    pub(crate) fn create(backend: &dyn StorageBackend, base: u64, slots: u32) -> Result<IdFile> {
        let name = file_name(base);
        let ctx = |e| StorageError::io(format!("create id index file {name}"), e);
        let _ = backend.remove(&name);
        let handle = backend.open(&name, true).map_err(ctx)?;
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&slots.to_le_bytes());
        header.extend_from_slice(&[0; 8]);
        handle.write_all_at(&header, 0).map_err(ctx)?;
        Ok(IdFile {
            base,
            name: name.clone(),
            handle,
            slots,
            count: 0,
            table: Some(vec![0; slots as usize]),
            pending: Vec::new(),
        })
    }

    /// Opens an existing file: (file, whether it is sealed); `None` when it is missing or its
    /// header is not valid.
    pub(crate) fn open(backend: &dyn StorageBackend, base: u64) -> Option<(IdFile, bool)> {
        let name = file_name(base);
        let handle = backend.open(&name, false).ok()?;
        let mut header = [0u8; HEADER as usize];
        handle.read_exact_at(&mut header, 0).ok()?;
        if &header[..4] != MAGIC {
            return None;
        }
        let slots = u32::from_le_bytes(header[4..8].try_into().ok()?);
        let sealed = header[8..12] == [1, 0, 0, 0];
        let mut file = IdFile {
            base,
            name,
            handle,
            slots: slots.max(1),
            count: 0,
            table: None,
            pending: Vec::new(),
        };
        let len = file.handle.len().ok()?;
        file.count = (len.saturating_sub(file.entries_at()) / ENTRY) as u32;
        Some((file, sealed))
    }

    /// Reads entry `number`; `None` when it is missing or damaged.
    pub(crate) fn entry(&self, number: u32) -> Option<IdEntry> {
        let mut b = [0u8; ENTRY as usize];
        let at = self.entries_at() + u64::from(number) * ENTRY;
        self.handle.read_exact_at(&mut b, at).ok()?;
        IdEntry::decode(&b, number)
    }

    /// Keeps the entries before `count` and rebuilds the slot table from them in memory.
    pub(crate) fn reopen_active(&mut self, count: u32) -> Result<()> {
        let ctx =
            |e| StorageError::io(format!("rebuild id index file {}", file_name(self.base)), e);
        self.handle
            .set_len(self.entries_at() + u64::from(count) * ENTRY)
            .map_err(ctx)?;
        let mut table = vec![0u32; self.slots as usize];
        let mut buf = vec![0u8; (ENTRY * 4096) as usize];
        let mut n = 0u32;
        while n < count {
            let k = (count - n).min(4096);
            let b = &mut buf[..(u64::from(k) * ENTRY) as usize];
            self.handle
                .read_exact_at(b, self.entries_at() + u64::from(n) * ENTRY)
                .map_err(ctx)?;
            for (i, e) in b.chunks_exact(ENTRY as usize).enumerate() {
                let hash = u64::from_le_bytes(e[..8].try_into().unwrap());
                table[(hash % u64::from(self.slots)) as usize] = n + i as u32 + 1;
            }
            n += k;
        }
        self.count = count;
        self.table = Some(table);
        self.handle.write_all_at(&[0; 4], 8).map_err(ctx)?;
        Ok(())
    }

    fn add(&mut self, hash: u64, key: bool, position: u64) {
        let table = self
            .table
            .as_mut()
            .expect("only the active file takes entries");
        let slot = (hash % u64::from(self.slots)) as usize;
        let entry = IdEntry {
            hash,
            position,
            prev: table[slot],
            key,
        };
        entry.encode(self.count, &mut self.pending);
        self.count += 1;
        table[slot] = self.count;
    }

    fn write_pending(&mut self, dirty: &mut Vec<Arc<dyn BackendFile>>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let first = self.count - (self.pending.len() as u64 / ENTRY) as u32;
        let at = self.entries_at() + u64::from(first) * ENTRY;
        self.handle
            .write_all_at(&self.pending, at)
            .map_err(|e| StorageError::io(format!("write id index file {}", self.name), e))?;
        self.pending.clear();
        mark(dirty, &self.handle);
        Ok(())
    }

    /// Writes the slot table and marks the file sealed; it takes no more entries.
    pub(crate) fn seal(&mut self, dirty: &mut Vec<Arc<dyn BackendFile>>) -> Result<()> {
        self.write_pending(dirty)?;
        let Some(table) = self.table.take() else {
            return Ok(());
        };
        let bytes: Vec<u8> = table.iter().flat_map(|s| s.to_le_bytes()).collect();
        let ctx = |e| StorageError::io(format!("seal id index file {}", self.name), e);
        self.handle.write_all_at(&bytes, HEADER).map_err(ctx)?;
        self.handle.write_all_at(&[1, 0, 0, 0], 8).map_err(ctx)?;
        mark(dirty, &self.handle);
        Ok(())
    }

    fn head(&self, hash: u64) -> Result<u32> {
        let slot = hash % u64::from(self.slots);
        if let Some(table) = &self.table {
            return Ok(table[slot as usize]);
        }
        let mut b = [0u8; 4];
        self.handle
            .read_exact_at(&mut b, HEADER + slot * 4)
            .map_err(|e| StorageError::io(format!("read id index file {}", self.name), e))?;
        Ok(u32::from_le_bytes(b))
    }

    /// Positions of the entries with `hash`, newest first.
    fn candidates(&self, hash: u64, key: bool, out: &mut Vec<u64>) -> Result<()> {
        let mut next = self.head(hash)?;
        while next > 0 && next <= self.count {
            let Some(e) = self.entry(next - 1) else {
                tracing::warn!(file = %self.name, entry = next - 1, "damaged id index entry: the chain ends here");
                break;
            };
            if e.hash == hash && e.key == key {
                out.push(e.position);
            }
            if e.prev >= next {
                break; // a chain only points back
            }
            next = e.prev;
        }
        Ok(())
    }
}

fn mark(dirty: &mut Vec<Arc<dyn BackendFile>>, handle: &Arc<dyn BackendFile>) {
    if !dirty.iter().any(|d| Arc::ptr_eq(d, handle)) {
        dirty.push(handle.clone());
    }
}

/// Every id index file, in log order; the last one may be active.
#[derive(Debug)]
pub(crate) struct IdIndex {
    backend: Arc<dyn StorageBackend>,
    slots: u32,
    pub(crate) files: Vec<IdFile>,
    pub(crate) dirty: Vec<Arc<dyn BackendFile>>,
}

impl IdIndex {
    pub(crate) fn new(backend: Arc<dyn StorageBackend>, slots: u32, files: Vec<IdFile>) -> Self {
        IdIndex {
            backend,
            slots,
            files,
            dirty: Vec::new(),
        }
    }

    /// Indexes a record of the segment starting at `segment_base`: its id and its key, if any.
    pub(crate) fn add(
        &mut self,
        segment_base: u64,
        position: u64,
        id: &Uuid,
        topic: &str,
        key: Option<&str>,
    ) -> Result<()> {
        if self.files.last().is_none_or(|f| f.base != segment_base) {
            if let Some(last) = self.files.last_mut() {
                last.seal(&mut self.dirty)?;
            }
            let file = IdFile::create(&*self.backend, segment_base, self.slots)?;
            mark(&mut self.dirty, &file.handle);
            self.files.push(file);
        }
        let file = self.files.last_mut().unwrap();
        file.add(id_hash(id), false, position);
        if let Some(key) = key {
            file.add(key_hash(topic, key), true, position);
        }
        Ok(())
    }

    /// Writes the entries added since the last call.
    pub(crate) fn write_pending(&mut self) -> Result<()> {
        match self.files.last_mut() {
            Some(f) => f.write_pending(&mut self.dirty),
            None => Ok(()),
        }
    }

    /// Log positions of the records that may have id `id`, oldest first.
    pub(crate) fn by_id(&self, id: &Uuid) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for f in &self.files {
            let at = out.len();
            f.candidates(id_hash(id), false, &mut out)?;
            out[at..].reverse();
        }
        Ok(out)
    }

    /// Log positions of the records that may have (topic, key), newest first, at most `limit`
    /// candidates.
    pub(crate) fn by_key(&self, topic: &str, key: &str, limit: usize) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for f in self.files.iter().rev() {
            f.candidates(key_hash(topic, key), true, &mut out)?;
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The log position of the `n`-th newest indexed id (the oldest one when there are fewer).
    pub(crate) fn nth_newest(&self, n: usize) -> Option<u64> {
        let mut seen = 0;
        let mut oldest = None;
        for f in self.files.iter().rev() {
            let mut end = f.count;
            while end > 0 {
                let from = end.saturating_sub(4096);
                let mut buf = vec![0u8; (u64::from(end - from) * ENTRY) as usize];
                if f.handle
                    .read_exact_at(&mut buf, f.entries_at() + u64::from(from) * ENTRY)
                    .is_err()
                {
                    break;
                }
                for (i, b) in buf.chunks_exact(ENTRY as usize).enumerate().rev() {
                    let Some(e) = IdEntry::decode(b, from + i as u32) else {
                        continue;
                    };
                    if e.key {
                        continue;
                    }
                    oldest = Some(e.position);
                    seen += 1;
                    if seen >= n {
                        return oldest;
                    }
                }
                end = from;
            }
        }
        oldest
    }

    /// Forgets the files of segments below `position` and returns their names, to delete. The
    /// newest file always stays: it belongs to the segment being written.
    pub(crate) fn remove_before(&mut self, position: u64) -> Vec<String> {
        let n = self
            .files
            .partition_point(|f| f.base < position)
            .min(self.files.len().saturating_sub(1));
        self.files.drain(..n).map(|f| f.name).collect()
    }

    /// (segment base, entries) of every file, for the store checkpoint.
    pub(crate) fn counts(&self) -> Vec<(u64, u32)> {
        self.files.iter().map(|f| (f.base, f.count)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::FaultyBackend;

    #[test]
    fn lookups_follow_the_chains_across_files() {
        let backend = Arc::new(FaultyBackend::new());
        let mut ix = IdIndex::new(backend.clone(), 4, Vec::new());
        let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
        for (i, id) in ids.iter().enumerate() {
            let segment = if i < 10 { 0 } else { 1000 };
            ix.add(segment, i as u64 * 10, id, "t", Some(["a", "b"][i % 2]))
                .unwrap();
            ix.write_pending().unwrap();
        }
        ix.add(1000, 500, &ids[3], "t", None).unwrap();
        ix.write_pending().unwrap();
        assert_eq!(ix.by_id(&ids[3]).unwrap(), vec![30, 500]);
        assert_eq!(ix.by_id(&ids[15]).unwrap(), vec![150]);
        assert!(ix.by_id(&Uuid::now_v7()).unwrap().is_empty());
        let a = ix.by_key("t", "a", 100).unwrap();
        assert_eq!(a, vec![180, 160, 140, 120, 100, 80, 60, 40, 20, 0]);
        assert!(ix.by_key("u", "a", 100).unwrap().is_empty());
        assert_eq!(ix.nth_newest(3), Some(180));
        let (file, sealed) = IdFile::open(&*backend, 0).unwrap();
        assert!(sealed);
        assert_eq!(file.count, 20);
        assert_eq!(ix.remove_before(1000), vec![file_name(0)]);
        assert_eq!(ix.by_id(&ids[3]).unwrap(), vec![500]);
    }
}
