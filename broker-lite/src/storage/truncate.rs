//! Cutting the end of a closed log: a returning former leader drops what it wrote after it was
//! superseded, before it follows the new leader (issue 13).

use std::path::Path;

use super::backend::{FileBackend, StorageBackend};
use super::checkpoint::{self, STORE_CHECKPOINT, StoreCheckpoint};
use super::codec::{self, Header};
use super::error::{Result, StorageError};
use super::lock::DirLock;
use super::segment::{parse_segment_name, segment_name};

/// Removes every record at or past log position `position` (a record start) from the store in
/// `dir`, which must not be open: later segment files are deleted, the rest of the segment
/// holding `position` is zeroed and fsynced, and the store checkpoint's durable position is
/// lowered to `position`. Returns how many log bytes were cut.
///
/// ```
/// use broker_lite::storage::{NewRecord, Store, StoreConfig, truncate_log};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let mut config = StoreConfig::default();
/// # config.segment_size = 64 * 1024;
/// # config.max_record_size = 16 * 1024;
/// let store = Store::open(dir.path(), config.clone()).await?;
/// store.append(NewRecord::new("orders", 0, "kept")).await?;
/// let cut = store.append(NewRecord::new("orders", 0, "cut")).await?;
/// store.close().await?;
/// assert!(truncate_log(dir.path(), cut.log_position)? > 0);
/// let store = Store::open(dir.path(), config).await?;
/// assert_eq!(store.progress().written, cut.log_position);
/// assert_eq!(store.read_queue("orders", 0, 0, 10, 1 << 20).await?.len(), 1);
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`StorageError::Locked`] when a store holds the directory; [`StorageError::Corrupt`] when
/// `position` is not the start of a record; I/O errors.
pub fn truncate_log(dir: &Path, position: u64) -> Result<u64> {
    let _lock = DirLock::acquire(dir)?;
    let backend = FileBackend::new(dir)
        .map_err(|e| StorageError::io(format!("open the data directory {}", dir.display()), e))?;
    let mut bases: Vec<u64> = backend
        .list()
        .map_err(|e| StorageError::io("list the segment files", e))?
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .collect();
    bases.sort_unstable();
    let Some(&keep) = bases.iter().rev().find(|&&b| b <= position) else {
        return Ok(0);
    };
    let mut cut = 0u64;
    for &base in bases.iter().filter(|&&b| b > keep) {
        let name = segment_name(base);
        if let Ok(file) = backend.open(&name, false) {
            cut += file.len().unwrap_or(0);
        }
        backend
            .remove(&name)
            .map_err(|e| StorageError::io(format!("remove segment file {name}"), e))?;
    }
    let name = segment_name(keep);
    let file = backend
        .open(&name, false)
        .map_err(|e| StorageError::io(format!("open segment file {name}"), e))?;
    let size = file
        .len()
        .map_err(|e| StorageError::io(format!("read segment file {name}"), e))?;
    // The end of the data in this segment: past the last frame (and an end marker).
    let mut end = position - keep;
    let mut head = [0u8; 8];
    while end + 8 <= size {
        file.read_exact_at(&mut head, end)
            .map_err(|e| StorageError::io(format!("read segment file {name}"), e))?;
        match codec::peek_header(&head, size - end) {
            Header::Frame(len) => end += len as u64,
            Header::EndOfSegment => {
                end += 8;
                break;
            }
            Header::Empty => break,
            Header::Invalid(reason) if end == position - keep => {
                return Err(StorageError::Corrupt {
                    segment: name,
                    offset: end,
                    position,
                    reason: format!("cannot cut the log here: {reason}"),
                });
            }
            Header::Invalid(_) => break,
        }
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = position - keep;
    while at < end {
        let n = (end - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)
            .map_err(|e| StorageError::io(format!("zero segment file {name}"), e))?;
        at += n;
    }
    file.sync_data()
        .map_err(|e| StorageError::io(format!("fsync segment file {name}"), e))?;
    cut += end - (position - keep);
    if let Some(bytes) = checkpoint::load(&backend, STORE_CHECKPOINT)? {
        let mut ckpt =
            StoreCheckpoint::decode(&bytes).ok_or_else(|| StorageError::CorruptCheckpoint {
                file: STORE_CHECKPOINT.to_string(),
                reason: "cannot be decoded".into(),
            })?;
        ckpt.durable = ckpt.durable.min(position);
        checkpoint::write_atomic(&backend, STORE_CHECKPOINT, &ckpt.encode())?;
    }
    backend
        .sync_dir()
        .map_err(|e| StorageError::io("fsync the data directory", e))?;
    Ok(cut)
}
