//! Where the bytes go: a small file-system abstraction, like redb's `StorageBackend`.
//!
//! A [`StorageBackend`] is one flat directory of named files; a [`BackendFile`] is one open file
//! with positional I/O. [`FileBackend`] uses the real file system; [`FaultyBackend`] keeps
//! everything in memory and can lose unsynced writes on a simulated crash, tear the last write,
//! flip a bit, fail fsync and run out of disk space, for crash-consistency tests.

use std::fmt::Debug;
use std::io;
use std::sync::Arc;

mod faulty;
mod file;

pub use faulty::FaultyBackend;
pub use file::FileBackend;

/// One open file.
///
/// All methods take `&self`: the store reads a file from many tasks while its writer appends.
pub trait BackendFile: Debug + Send + Sync {
    /// Fills `buf` from `offset`; fails with [`io::ErrorKind::UnexpectedEof`] past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends (with zeros) to `len` bytes. Extending may leave the new range sparse.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Extends the file (with zeros) to at least `len` bytes and reserves the disk space for them,
    /// so that later writes below `len` do not run out of space (`fallocate`).
    ///
    /// Fails with [`io::ErrorKind::StorageFull`] when the disk has no room. The default only
    /// calls [`set_len`](Self::set_len), for backends without a notion of free space.
    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.len()? < len {
            self.set_len(len)?;
        }
        Ok(())
    }
    /// Makes the data written so far (and the length) durable.
    fn sync_data(&self) -> io::Result<()>;
}

/// A flat directory of files.
pub trait StorageBackend: Debug + Send + Sync + 'static {
    /// Opens `name`, creating an empty file when `create` is set and it does not exist.
    ///
    /// Fails with [`io::ErrorKind::NotFound`] when it does not exist and `create` is not set.
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn BackendFile>>;
    /// The names of all files, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Removes `name`. Open handles stay readable.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes the directory entries (creations, removals, renames) durable.
    fn sync_dir(&self) -> io::Result<()>;
}
