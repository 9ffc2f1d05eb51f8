//! Exclusive use of a data directory: an advisory `flock` on its `LOCK` file, held from
//! [`Store::open`](super::Store::open) until [`Store::close`](super::Store::close) (or drop), so that
//! two stores, in one process or in two, never append to the same log.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

use super::error::{Result, StorageError};

/// Name of the lock file in the data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// A held directory lock; released when dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock without waiting.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::io(format!("open the lock file {}", path.display()), e))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StorageError::Locked {
                dir: dir.display().to_string(),
            }),
            Err(e) => Err(StorageError::io(
                format!("lock the data directory {}", dir.display()),
                e.into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(StorageError::Locked { .. })
        ));
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
