//! An in-memory backend that injects faults, for crash-consistency tests.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::{BackendFile, StorageBackend};

/// An in-memory [`StorageBackend`] that can simulate crashes and disk faults.
///
/// Each file keeps two images: what readers see now and what survived its last
/// [`sync_data`](BackendFile::sync_data). [`crash`](FaultyBackend::crash) returns a new backend that
/// holds only the synced images, as a machine would after losing power; the old backend (and any store
/// still using it) keeps running on its own copy. Directory operations (create, remove, rename) are
/// treated as durable at once.
///
/// ```
/// use broker_lite::storage::backend::{FaultyBackend, StorageBackend};
///
/// let backend = FaultyBackend::new();
/// let f = backend.open("a", true)?;
/// f.write_all_at(b"hello", 0)?;
/// f.sync_data()?;
/// f.write_all_at(b" world", 5)?;
/// let after = backend.crash();
/// assert_eq!(after.contents("a").unwrap(), b"hello");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct FaultyBackend {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    files: Mutex<HashMap<String, Arc<MemFile>>>,
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    fail_sync: AtomicBool,
    /// The id of one file whose `sync_data` fails.
    fail_sync_file: Mutex<Option<u64>>,
    fail_write: AtomicBool,
    /// While true, nothing can grow a file (a full disk); preallocated space stays writable.
    disk_full: AtomicBool,
    syncs: AtomicU64,
    /// While true, `sync_data` waits (a stalled disk).
    hold_sync: Mutex<bool>,
    hold_released: Condvar,
    syncs_waiting: AtomicU64,
    /// The most recent write not yet covered by a sync: (file id, offset, bytes).
    last_write: Mutex<Option<(u64, u64, Vec<u8>)>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct MemFile {
    id: u64,
    images: Mutex<Images>,
    faults: Arc<Faults>,
}

#[derive(Debug, Clone, Default)]
struct Images {
    current: Vec<u8>,
    synced: Vec<u8>,
    /// Bytes of `current` backed by disk space: [`set_len`](BackendFile::set_len) extends a file
    /// sparsely, [`allocate`](BackendFile::allocate) and writes allocate.
    allocated: usize,
}

impl FaultyBackend {
    /// An empty backend without faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later `sync_data` fail (or succeed again).
    pub fn fail_sync(&self, fail: bool) {
        self.inner.faults.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// Makes every later `sync_data` of the file now named `name` fail; `None` clears it.
    ///
    /// # Panics
    /// When there is no such file.
    pub fn fail_sync_of(&self, name: Option<&str>) {
        let id = name.map(|n| self.inner.files.lock().unwrap()[n].id);
        *self.inner.faults.fail_sync_file.lock().unwrap() = id;
    }

    /// Makes every later `write_all_at` fail (or succeed again).
    pub fn fail_write(&self, fail: bool) {
        self.inner.faults.fail_write.store(fail, Ordering::SeqCst);
    }

    /// While `full` is set the disk has no free space: [`allocate`](BackendFile::allocate) and
    /// writes to space not allocated yet (past the end, or into a sparse range left by
    /// [`set_len`](BackendFile::set_len)) fail with [`io::ErrorKind::StorageFull`]; writes into
    /// allocated space still succeed. After [`crash`](Self::crash) every file counts as allocated.
    pub fn disk_full(&self, full: bool) {
        self.inner.faults.disk_full.store(full, Ordering::SeqCst);
    }

    /// While `hold` is set, every `sync_data` blocks until it is cleared (a stalled disk).
    pub fn hold_sync(&self, hold: bool) {
        let faults = &self.inner.faults;
        *faults.hold_sync.lock().unwrap() = hold;
        faults.hold_released.notify_all();
    }

    /// How many `sync_data` calls are blocked by [`hold_sync`](Self::hold_sync) right now.
    pub fn syncs_waiting(&self) -> u64 {
        self.inner.faults.syncs_waiting.load(Ordering::SeqCst)
    }

    /// How many `sync_data` calls succeeded so far.
    pub fn sync_count(&self) -> u64 {
        self.inner.faults.syncs.load(Ordering::SeqCst)
    }

    /// A backend holding what survives a power loss now: the synced image of every file.
    pub fn crash(&self) -> FaultyBackend {
        self.crash_tearing_last_write(0)
    }

    /// Like [`crash`](Self::crash), but the first `keep` bytes of the most recent unsynced write
    /// survive (a torn write).
    pub fn crash_tearing_last_write(&self, keep: usize) -> FaultyBackend {
        let files = self.inner.files.lock().unwrap();
        let last = self.inner.faults.last_write.lock().unwrap().clone();
        let after = FaultyBackend::new();
        let mut new_files = after.inner.files.lock().unwrap();
        for (name, file) in files.iter() {
            let mut image = file.images.lock().unwrap().synced.clone();
            if let Some((id, offset, bytes)) = &last {
                if *id == file.id && keep > 0 {
                    write_into(&mut image, &bytes[..keep.min(bytes.len())], *offset);
                }
            }
            new_files.insert(name.clone(), after.new_file(image));
        }
        drop(new_files);
        after
    }

    /// Flips one bit in both images of `name` (media corruption).
    ///
    /// # Panics
    /// When the file does not exist or is shorter than `offset`.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) {
        let file = self.inner.files.lock().unwrap()[name].clone();
        let mut images = file.images.lock().unwrap();
        images.current[offset as usize] ^= 1 << (bit % 8);
        images.synced[offset as usize] ^= 1 << (bit % 8);
    }

    /// What a reader of `name` sees now.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let file = self.inner.files.lock().unwrap().get(name)?.clone();
        let images = file.images.lock().unwrap();
        Some(images.current.clone())
    }

    fn new_file(&self, image: Vec<u8>) -> Arc<MemFile> {
        Arc::new(MemFile {
            id: self.inner.faults.next_id.fetch_add(1, Ordering::SeqCst),
            images: Mutex::new(Images {
                allocated: image.len(),
                current: image.clone(),
                synced: image,
            }),
            faults: self.inner.faults.clone(),
        })
    }
}

impl Faults {
    fn check_space(&self) -> io::Result<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ));
        }
        Ok(())
    }
}

fn write_into(image: &mut Vec<u8>, buf: &[u8], offset: u64) {
    let end = offset as usize + buf.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(buf);
}

impl BackendFile for MemFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let images = self.images.lock().unwrap();
        let start = offset as usize;
        let end = start.saturating_add(buf.len());
        if end > images.current.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&images.current[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.faults.fail_write.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        let mut images = self.images.lock().unwrap();
        let end = offset as usize + buf.len();
        if end > images.allocated {
            self.faults.check_space()?;
            images.allocated = end;
        }
        write_into(&mut images.current, buf, offset);
        drop(images);
        *self.faults.last_write.lock().unwrap() = Some((self.id, offset, buf.to_vec()));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.images.lock().unwrap().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut images = self.images.lock().unwrap();
        images.current.resize(len as usize, 0);
        images.allocated = images.allocated.min(len as usize);
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut images = self.images.lock().unwrap();
        let len = len as usize;
        if images.allocated < len {
            self.faults.check_space()?;
            images.allocated = len;
        }
        if images.current.len() < len {
            images.current.resize(len, 0);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut held = self.faults.hold_sync.lock().unwrap();
        if *held {
            self.faults.syncs_waiting.fetch_add(1, Ordering::SeqCst);
            while *held {
                held = self.faults.hold_released.wait(held).unwrap();
            }
            self.faults.syncs_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        drop(held);
        if self.faults.fail_sync.load(Ordering::SeqCst)
            || *self.faults.fail_sync_file.lock().unwrap() == Some(self.id)
        {
            return Err(io::Error::other("injected fsync failure"));
        }
        let mut images = self.images.lock().unwrap();
        images.synced = images.current.clone();
        let mut last = self.faults.last_write.lock().unwrap();
        if last.as_ref().is_some_and(|(id, _, _)| *id == self.id) {
            *last = None;
        }
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl StorageBackend for FaultyBackend {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn BackendFile>> {
        let mut files = self.inner.files.lock().unwrap();
        if let Some(file) = files.get(name) {
            return Ok(file.clone());
        }
        if !create {
            return Err(io::ErrorKind::NotFound.into());
        }
        let file = self.new_file(Vec::new());
        files.insert(name.to_string(), file.clone());
        Ok(file)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.inner.files.lock().unwrap().keys().cloned().collect())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match self.inner.files.lock().unwrap().remove(name) {
            Some(_) => Ok(()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.inner.files.lock().unwrap();
        let file = files.remove(from).ok_or(io::ErrorKind::NotFound)?;
        files.insert(to.to_string(), file);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.inner.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
}
