//! Segment files: preallocated (`fallocate`, not sparse) pieces of the commit log, named by the log position of their first
//! byte, zero-padded to 20 digits (`00000000000000000000`, `00000000001073741824`, ...).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::backend::{BackendFile, StorageBackend};
use super::error::{Result, StorageError};

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Log position of the first byte.
    pub(crate) base: u64,
    /// Preallocated size in bytes.
    pub(crate) size: u64,
    /// File name.
    pub(crate) name: String,
    pub(crate) file: Arc<dyn BackendFile>,
    /// Newest stored timestamp of a record in this segment (ms), for retention by time.
    newest_ms: AtomicU64,
}

impl Segment {
    /// Opens an existing segment.
    pub(crate) fn open(backend: &dyn StorageBackend, name: &str, base: u64) -> Result<Segment> {
        let ctx = || format!("open segment file {name}");
        let file = backend
            .open(name, false)
            .map_err(|e| StorageError::io(ctx(), e))?;
        let size = file.len().map_err(|e| StorageError::io(ctx(), e))?;
        Ok(Self::new(base, size, name.to_string(), file))
    }

    /// Creates and preallocates a new segment, durably (file, length and directory entry).
    ///
    /// The space is reserved for real ([`BackendFile::allocate`], `fallocate`), not left sparse:
    /// a full disk shows up here, before any record is placed in the segment, and never as a
    /// failed write in the middle of the log. On failure the file is removed again (best effort),
    /// so that a later attempt starts from scratch.
    pub(crate) fn create(backend: &dyn StorageBackend, base: u64, size: u64) -> Result<Segment> {
        let name = segment_name(base);
        let created = backend.open(&name, true).and_then(|f| {
            f.allocate(size)?;
            f.sync_data()?;
            backend.sync_dir()?;
            Ok(f)
        });
        match created {
            Ok(file) => Ok(Self::new(base, size, name, file)),
            Err(e) => {
                let _ = backend.remove(&name);
                let context = if e.kind() == io::ErrorKind::StorageFull {
                    format!(
                        "preallocate segment file {name} ({size} bytes): the disk is full; free space \
                         or lower the retention, then send again (the store keeps serving reads)"
                    )
                } else {
                    format!("create segment file {name}")
                };
                Err(StorageError::io(context, e))
            }
        }
    }

    fn new(base: u64, size: u64, name: String, file: Arc<dyn BackendFile>) -> Segment {
        Segment {
            base,
            size,
            name,
            file,
            newest_ms: AtomicU64::new(0),
        }
    }

    /// Log position just past the end of this segment.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether `position` falls inside this segment.
    pub(crate) fn contains(&self, position: u64) -> bool {
        position >= self.base && position < self.end()
    }

    /// Reads `len` bytes at log position `position`.
    pub(crate) fn read(&self, position: u64, len: usize) -> Result<Bytes> {
        let mut buf = BytesMut::zeroed(len);
        self.file
            .read_exact_at(&mut buf, position - self.base)
            .map_err(|e| {
                StorageError::io(
                    format!(
                        "read {len} bytes at offset {} of segment file {}",
                        position - self.base,
                        self.name
                    ),
                    e,
                )
            })?;
        Ok(buf.freeze())
    }

    pub(crate) fn note_stored(&self, ms: u64) {
        self.newest_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub(crate) fn newest_ms(&self) -> u64 {
        self.newest_ms.load(Ordering::Relaxed)
    }
}

/// The file name of the segment starting at `base`.
pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}")
}

/// The base position of a segment file name, or `None` for other files.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(0), "00000000000000000000");
        assert_eq!(segment_name(1 << 30), "00000000001073741824");
        assert_eq!(parse_segment_name("00000000001073741824"), Some(1 << 30));
        assert_eq!(parse_segment_name("store.ckpt"), None);
        assert_eq!(parse_segment_name("0000000000000000000x"), None);
        assert_eq!(parse_segment_name("99999999999999999999"), None);
    }
}
