//! Small files replaced atomically: write a temporary file, fsync it, rename it over the old one,
//! fsync the directory. A reader sees the old or the new content, never a mix.
//!
//! File format: magic `CKP1`, payload length (u32 LE), CRC32C of the payload (u32 LE), payload.

use std::io;

use bytes::Bytes;

use super::backend::StorageBackend;
use super::error::{Result, StorageError};
use super::index::QueueState;

const MAGIC: &[u8; 4] = b"CKP1";
/// Suffix of temporary files; leftovers are removed when the store opens.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Atomically replaces `name` with `payload`.
pub(crate) fn write_atomic(backend: &dyn StorageBackend, name: &str, payload: &[u8]) -> Result<()> {
    let tmp = format!("{name}{TMP_SUFFIX}");
    let ctx = |what: &str| format!("{what} checkpoint {name}");
    let mut buf = Vec::with_capacity(12 + payload.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    let file = backend
        .open(&tmp, true)
        .map_err(|e| StorageError::io(ctx("create"), e))?;
    file.set_len(0)
        .and_then(|()| file.write_all_at(&buf, 0))
        .and_then(|()| file.sync_data())
        .map_err(|e| StorageError::io(ctx("write"), e))?;
    drop(file);
    backend
        .rename(&tmp, name)
        .and_then(|()| backend.sync_dir())
        .map_err(|e| StorageError::io(ctx("rename"), e))
}

/// Reads `name`; `None` when it does not exist.
pub(crate) fn load(backend: &dyn StorageBackend, name: &str) -> Result<Option<Bytes>> {
    let file = match backend.open(name, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(format!("open checkpoint {name}"), e)),
    };
    let corrupt = |reason: &str| StorageError::CorruptCheckpoint {
        file: name.to_string(),
        reason: reason.to_string(),
    };
    let len = file
        .len()
        .map_err(|e| StorageError::io(format!("read checkpoint {name}"), e))?;
    if len < 12 {
        return Err(corrupt("shorter than its header"));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| StorageError::io(format!("read checkpoint {name}"), e))?;
    if &buf[..4] != MAGIC {
        return Err(corrupt("wrong magic"));
    }
    let payload_len = u32::from_le_bytes(buf[4..8].try_into().unwrap()) as usize;
    if payload_len != buf.len() - 12 {
        return Err(corrupt("length does not match"));
    }
    let crc = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    if crc32c::crc32c(&buf[12..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Some(Bytes::from(buf).slice(12..)))
}

/// Checks a user checkpoint name and returns its file name.
pub(crate) fn user_file_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(StorageError::InvalidCheckpointName(name.to_string()));
    }
    Ok(format!("cp-{name}.ckpt"))
}

/// File name of the store's own checkpoint.
pub(crate) const STORE_CHECKPOINT: &str = "store.ckpt";

/// The store's own checkpoint: how far the log is known durable, and the first available offset of
/// every queue (so that a queue emptied by retention keeps counting from where it was).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StoreCheckpoint {
    /// Every byte of the log below this position was fsynced.
    pub(crate) durable: u64,
    /// (topic, queue id, first available queue offset).
    pub(crate) floors: Vec<(String, u32, u64)>,
    /// Written after a failed write or fsync: nothing beyond `durable` may be trusted, even if it
    /// reads back fine (the page cache may hold data the disk never got; "fsyncgate"), so the next
    /// open cuts the log at `durable`. Encoded as a trailing byte `1`; absent in older files.
    pub(crate) fenced: bool,
    /// How far the index files are durable; absent in files written before they existed (the
    /// open then rebuilds them from the whole log). Encoded after the fence byte, tagged `2`.
    pub(crate) index: Option<IndexCheckpoint>,
}

/// How far the index files were written and fsynced when the checkpoint was taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IndexCheckpoint {
    /// Log position below which every record's entries are in the index files.
    pub(crate) position: u64,
    /// Every queue: its file number and how many entries are in its files.
    pub(crate) queues: Vec<QueueState>,
    /// Every segment: (base, newest stored timestamp in ms, entries in its id index file).
    pub(crate) segments: Vec<(u64, u64, u32)>,
}

impl StoreCheckpoint {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(12 + self.floors.len() * 32);
        buf.extend_from_slice(&self.durable.to_le_bytes());
        buf.extend_from_slice(&(self.floors.len() as u32).to_le_bytes());
        for (topic, queue_id, min) in &self.floors {
            buf.extend_from_slice(&(topic.len() as u16).to_le_bytes());
            buf.extend_from_slice(topic.as_bytes());
            buf.extend_from_slice(&queue_id.to_le_bytes());
            buf.extend_from_slice(&min.to_le_bytes());
        }
        if self.fenced {
            buf.push(1);
        }
        if let Some(ix) = &self.index {
            buf.push(2);
            buf.extend_from_slice(&ix.position.to_le_bytes());
            buf.extend_from_slice(&(ix.queues.len() as u32).to_le_bytes());
            for q in &ix.queues {
                buf.extend_from_slice(&(q.topic.len() as u16).to_le_bytes());
                buf.extend_from_slice(q.topic.as_bytes());
                buf.extend_from_slice(&q.queue_id.to_le_bytes());
                buf.extend_from_slice(&q.number.to_le_bytes());
                buf.extend_from_slice(&q.next.to_le_bytes());
            }
            buf.extend_from_slice(&(ix.segments.len() as u32).to_le_bytes());
            for (base, newest, ids) in &ix.segments {
                buf.extend_from_slice(&base.to_le_bytes());
                buf.extend_from_slice(&newest.to_le_bytes());
                buf.extend_from_slice(&ids.to_le_bytes());
            }
        }
        buf
    }

    pub(crate) fn decode(mut b: &[u8]) -> Option<Self> {
        let durable = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
        let count = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
        let mut floors = Vec::new();
        for _ in 0..count {
            let len = u16::from_le_bytes(take(&mut b, 2)?.try_into().ok()?) as usize;
            let topic = String::from_utf8(take(&mut b, len)?.to_vec()).ok()?;
            let queue_id = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
            let min = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
            floors.push((topic, queue_id, min));
        }
        let fenced = b.first() == Some(&1);
        if fenced {
            b = &b[1..];
        }
        let index = match b.first() {
            None => None,
            Some(2) => {
                b = &b[1..];
                Some(decode_index(&mut b)?)
            }
            Some(_) => return None,
        };
        if !b.is_empty() {
            return None;
        }
        Some(StoreCheckpoint {
            durable,
            floors,
            fenced,
            index,
        })
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Some(head)
}

fn u32_of(b: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?))
}

fn u64_of(b: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?))
}

fn decode_index(b: &mut &[u8]) -> Option<IndexCheckpoint> {
    let position = u64_of(b)?;
    let mut queues = Vec::new();
    for _ in 0..u32_of(b)? {
        let len = u16::from_le_bytes(take(b, 2)?.try_into().ok()?) as usize;
        let topic = String::from_utf8(take(b, len)?.to_vec()).ok()?;
        queues.push(QueueState {
            topic,
            queue_id: u32_of(b)?,
            number: u64_of(b)?,
            next: u64_of(b)?,
        });
    }
    let mut segments = Vec::new();
    for _ in 0..u32_of(b)? {
        segments.push((u64_of(b)?, u64_of(b)?, u32_of(b)?));
    }
    Some(IndexCheckpoint {
        position,
        queues,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::FaultyBackend;

    #[test]
    fn write_then_load() {
        let b = FaultyBackend::new();
        assert!(load(&b, "x").unwrap().is_none());
        write_atomic(&b, "x", b"one").unwrap();
        write_atomic(&b, "x", b"two").unwrap();
        assert_eq!(load(&b, "x").unwrap().unwrap(), Bytes::from_static(b"two"));
        // Durable: survives a crash right after.
        assert_eq!(
            load(&b.crash(), "x").unwrap().unwrap(),
            Bytes::from_static(b"two")
        );
    }

    #[test]
    fn corruption_is_reported() {
        let b = FaultyBackend::new();
        write_atomic(&b, "x", b"payload").unwrap();
        b.flip_bit("x", 14, 0);
        assert!(matches!(
            load(&b, "x"),
            Err(StorageError::CorruptCheckpoint { .. })
        ));
    }

    #[test]
    fn failed_sync_keeps_the_old_content() {
        let b = FaultyBackend::new();
        write_atomic(&b, "x", b"old").unwrap();
        b.fail_sync(true);
        assert!(write_atomic(&b, "x", b"new").is_err());
        assert_eq!(load(&b, "x").unwrap().unwrap(), Bytes::from_static(b"old"));
    }

    #[test]
    fn store_checkpoint_round_trip() {
        let mut c = StoreCheckpoint {
            durable: 77,
            floors: vec![("a".into(), 1, 5), ("topic".into(), 0, 0)],
            fenced: false,
            index: None,
        };
        assert_eq!(StoreCheckpoint::decode(&c.encode()), Some(c.clone()));
        assert_eq!(StoreCheckpoint::decode(&c.encode()[..10]), None);
        c.fenced = true;
        assert_eq!(StoreCheckpoint::decode(&c.encode()), Some(c.clone()));
        let mut bad = c.encode();
        bad.push(0);
        assert_eq!(StoreCheckpoint::decode(&bad), None);
        c.index = Some(IndexCheckpoint {
            position: 70,
            queues: vec![QueueState {
                topic: "a".into(),
                queue_id: 1,
                number: 3,
                next: 9,
            }],
            segments: vec![(0, 1234, 17)],
        });
        assert_eq!(StoreCheckpoint::decode(&c.encode()), Some(c.clone()));
        c.fenced = false;
        assert_eq!(StoreCheckpoint::decode(&c.encode()), Some(c.clone()));
        let full = c.encode();
        assert_eq!(StoreCheckpoint::decode(&full[..full.len() - 1]), None);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            user_file_name("group-1.offsets").unwrap(),
            "cp-group-1.offsets.ckpt"
        );
        for bad in ["", "a/b", "a b", &"x".repeat(129)] {
            assert!(user_file_name(bad).is_err(), "{bad}");
        }
    }
}
