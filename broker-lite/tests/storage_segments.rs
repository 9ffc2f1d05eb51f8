//! Starting a new segment (issue 12 item 11): it is preallocated for real, a full disk refuses
//! only the appends that need the new segment, and its creation never blocks readers.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use broker_lite::storage::backend::FaultyBackend;
use broker_lite::storage::{
    FlushMode, FlushOutcome, NewRecord, QueueBounds, StorageError, Store, StoreConfig,
};

const SEGMENT: u64 = 64 * 1024;

fn config() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.segment_size = SEGMENT;
    c.max_record_size = 16 * 1024;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

async fn open(backend: &FaultyBackend, c: StoreConfig) -> Result<Store, StorageError> {
    Store::open_with_backend(Arc::new(backend.clone()), c).await
}

fn rec(i: u64) -> NewRecord {
    NewRecord::new("t", 0, format!("{i:04}").repeat(250))
}

/// Appends records until the next one would not fit in the first segment; returns how many.
async fn fill_first_segment(store: &Store) -> anyhow::Result<u64> {
    let len = rec(0).encoded_len() as u64;
    let mut n = 0;
    while store.progress().written + len <= SEGMENT {
        let a = store.append(rec(n)).await?;
        assert!(a.log_position < SEGMENT);
        n += 1;
    }
    Ok(n)
}

#[tokio::test]
async fn a_full_disk_refuses_only_the_appends_that_need_a_new_segment() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let n = fill_first_segment(&store).await?;
    backend.disk_full(true);
    let err = store.append(rec(n)).await.unwrap_err();
    match &err {
        StorageError::Io { source, .. } => assert_eq!(source.kind(), io::ErrorKind::StorageFull),
        other => panic!("expected an i/o error, got {other:?}"),
    }
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("disk is full"), "{err}");
    // The store is not failed: it still serves reads.
    assert!(!store.progress().failed);
    assert_eq!(
        store.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: n })
    );
    assert_eq!(store.read_queue("t", 0, 0, 1, usize::MAX).await?.len(), 1);
    // Once there is room again, writes are accepted; the refused record took no offset.
    backend.disk_full(false);
    let a = store.append(rec(n)).await?;
    assert_eq!(a.outcome, FlushOutcome::Flushed);
    assert_eq!((a.queue_offset, a.log_position), (n, SEGMENT));
    store.close().await?;
    let reopened = open(&backend.crash(), config()).await?;
    assert_eq!(
        reopened.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: n + 1 })
    );
    Ok(())
}

#[tokio::test]
async fn segments_are_preallocated_on_real_files() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    let meta = std::fs::metadata(dir.path().join("00000000000000000000"))?;
    assert_eq!(meta.len(), SEGMENT);
    // Not sparse: the blocks are there before anything is written.
    assert!(meta.blocks() * 512 >= SEGMENT, "{} blocks", meta.blocks());
    store.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_while_the_next_segment_is_created() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let mut c = config();
    // No fsync on append: the only fsync below is the one of the segment creation.
    c.flush_mode = FlushMode::Async {
        interval: Duration::from_secs(3600),
    };
    let store = open(&backend, c).await?;
    let n = fill_first_segment(&store).await?;
    backend.hold_sync(true);
    let rolling = tokio::spawn({
        let store = store.clone();
        async move { store.append(rec(n)).await }
    });
    // Bounded polling: the roll now waits in the fsync of its new segment.
    for _ in 0..10_000 {
        if backend.syncs_waiting() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(backend.syncs_waiting(), 1, "the roll is in its fsync");
    // Readers take the index lock; they must not wait for the stalled fsync. The bound only turns
    // a hang into a failure.
    let reader = tokio::task::spawn_blocking({
        let store = store.clone();
        move || store.queue_bounds("t", 0)
    });
    let read = tokio::spawn({
        let store = store.clone();
        async move { store.read_queue("t", 0, 0, 1, usize::MAX).await }
    });
    let bounds = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let read = tokio::time::timeout(Duration::from_secs(10), read).await;
    backend.hold_sync(false);
    assert_eq!(
        bounds.expect("a read waited for the segment creation")?,
        Some(QueueBounds { min: 0, max: n })
    );
    assert_eq!(read.expect("a read waited")??.len(), 1);
    let a = rolling.await??;
    assert_eq!((a.queue_offset, a.log_position), (n, SEGMENT));
    Ok(())
}
