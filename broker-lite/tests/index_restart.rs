//! Restarting a store reads the log only past what the index files hold (the index checkpoint),
//! not every segment; damage further back is still reported, when a read reaches it; ids and keys
//! are found through the on-disk id index, before and after a restart and after retention.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use broker_lite::storage::backend::{BackendFile, FaultyBackend, StorageBackend};
use broker_lite::storage::{Appended, NewRecord, QueueBounds, StorageError, Store};
use uuid::Uuid;

mod storage_common;

use storage_common::{FIRST_SEGMENT, config, open};

/// A backend that counts the bytes read from each file, around the in-memory one.
#[derive(Debug, Clone)]
struct Counting {
    inner: FaultyBackend,
    reads: Arc<Mutex<HashMap<String, u64>>>,
}

#[derive(Debug)]
struct CountingFile {
    name: String,
    inner: Arc<dyn BackendFile>,
    reads: Arc<Mutex<HashMap<String, u64>>>,
}

impl BackendFile for CountingFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        *self
            .reads
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() += buf.len() as u64;
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
}

impl StorageBackend for Counting {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn BackendFile>> {
        Ok(Arc::new(CountingFile {
            name: name.to_string(),
            inner: self.inner.open(name, create)?,
            reads: self.reads.clone(),
        }))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

fn rec(i: u64) -> NewRecord {
    NewRecord::new(
        "t",
        (i % 4) as u32,
        format!("message {i} {}", "x".repeat(500)),
    )
    .with_key(format!("k{}", i % 10))
}

fn segment_files(backend: &FaultyBackend) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = backend
        .list()?
        .into_iter()
        .filter(|n| n.len() == 20)
        .collect();
    names.sort();
    Ok(names)
}

async fn fill(store: &Store, n: u64) -> anyhow::Result<Vec<(Appended, u32, Uuid)>> {
    let mut acked = Vec::new();
    for i in 0..n {
        let r = rec(i);
        let (q, id) = (r.queue_id, r.message_id);
        acked.push((store.append(r).await?, q, id));
    }
    Ok(acked)
}

#[tokio::test]
async fn a_restart_reads_only_the_log_past_the_index_checkpoint() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let acked = fill(&store, 400).await?;
    store.close().await?;
    let segments = segment_files(&backend)?;
    assert!(segments.len() >= 3, "{segments:?}");

    let counting = Counting {
        inner: backend.clone(),
        reads: Arc::default(),
    };
    let store = Store::open_with_backend(Arc::new(counting.clone()), config()).await?;
    let reads = counting.reads.lock().unwrap().clone();
    for s in &segments[..segments.len() - 1] {
        assert_eq!(
            reads.get(s),
            None,
            "segment {s} was read on open: {reads:?}"
        );
    }
    for (a, q, id) in &acked {
        let got = store
            .read_queue("t", *q, a.queue_offset, 1, usize::MAX)
            .await?;
        assert_eq!(
            (got[0].queue_offset, got[0].message_id),
            (a.queue_offset, *id)
        );
    }
    assert_eq!(
        store.queue_bounds("t", 1),
        Some(QueueBounds { min: 0, max: 100 })
    );
    assert_eq!(store.append(rec(1)).await?.queue_offset, 100);
    Ok(())
}

#[tokio::test]
async fn damage_behind_the_index_checkpoint_is_reported_when_read() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let acked = fill(&store, 8).await?;
    store.close().await?;
    let (victim, q, _) = acked[2];
    backend.flip_bit(FIRST_SEGMENT, victim.log_position + 70, 3);

    let store = open(&backend, config()).await?;
    let err = store
        .read_queue("t", q, victim.queue_offset, 1, usize::MAX)
        .await
        .unwrap_err();
    match &err {
        StorageError::Corrupt {
            segment, offset, ..
        } => assert_eq!(
            (segment.as_str(), *offset),
            (FIRST_SEGMENT, victim.log_position)
        ),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The other records stay readable.
    let (next, q3, id3) = acked[3];
    let got = store
        .read_queue("t", q3, next.queue_offset, 1, usize::MAX)
        .await?;
    assert_eq!(got[0].message_id, id3);
    Ok(())
}

/// Every acknowledged id is found at its position; the key `k3` gives its newest records.
async fn check_lookups(store: &Store, acked: &[(Appended, u32, Uuid)]) -> anyhow::Result<()> {
    for (a, _, id) in acked {
        let found = store.find_by_id(*id).await?.expect("indexed");
        assert_eq!(found.log_position, a.log_position);
    }
    assert!(store.find_by_id(Uuid::now_v7()).await?.is_none());
    let k3: Vec<u64> = store
        .find_by_key("t", "k3", 5)
        .await?
        .iter()
        .map(|r| r.log_position)
        .collect();
    let want: Vec<u64> = acked
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 3)
        .rev()
        .take(5)
        .map(|(_, (a, _, _))| a.log_position)
        .collect();
    assert_eq!(k3, want);
    assert!(store.find_by_key("u", "k3", 5).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn ids_and_keys_are_found_from_the_index_files() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let acked = fill(&store, 300).await?;
    // A later copy with the same id in another topic (a dead letter keeps the id): the original
    // is the one found.
    let mut copy = NewRecord::new("%DLQ%g", 0, "copy");
    copy.message_id = acked[0].2;
    let _ = store.append(copy).await?;
    check_lookups(&store, &acked).await?;
    store.close().await?;

    let store = open(&backend, config()).await?;
    check_lookups(&store, &acked).await?;
    store.close().await?;

    // Retention by disk usage removes the oldest segments with their id index files.
    let mut c = config();
    c.max_disk_usage = Some(2 * c.segment_size);
    let store = open(&backend, c).await?;
    let report = store.enforce_retention(SystemTime::now()).await?;
    assert!(!report.removed_segments.is_empty());
    let names = backend.list()?;
    for gone in &report.removed_segments {
        assert!(!names.contains(&format!("ix{gone}")), "{names:?}");
    }
    assert!(store.find_by_id(acked[1].2).await?.is_none());
    let (last, _, id) = acked[299];
    let found = store.find_by_id(id).await?.expect("kept");
    assert_eq!(found.log_position, last.log_position);
    Ok(())
}
