//! Retention by time and size (safeguard B5) and atomic checkpoints.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use broker_lite::storage::backend::{FaultyBackend, StorageBackend};
use broker_lite::storage::{NewRecord, QueueBounds, StorageError, Store, StoreConfig};
use bytes::Bytes;

const SEGMENT: u64 = 64 * 1024;

fn config() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.segment_size = SEGMENT;
    c.max_record_size = 16 * 1024;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

fn segments(backend: &FaultyBackend) -> Vec<String> {
    let mut names: Vec<_> = backend
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.len() == 20)
        .collect();
    names.sort();
    names
}

/// Fills about `n` segments: queue 0 gets every record, queue 1 only the first ten.
async fn fill(store: &Store, n: u64) -> anyhow::Result<()> {
    let records = n * SEGMENT / 1100;
    for i in 0..records {
        let _ = store
            .append(NewRecord::new("t", 0, vec![b'a'; 1000]))
            .await?;
        if i < 10 {
            let _ = store.append(NewRecord::new("t", 1, "early")).await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn old_segments_expire_by_time_but_the_active_one_stays() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = Store::open_with_backend(Arc::new(backend.clone()), config()).await?;
    fill(&store, 4).await?;
    let before = segments(&backend);
    assert!(before.len() >= 4);

    let report = store.enforce_retention(SystemTime::now()).await?;
    assert!(
        report.removed_segments.is_empty(),
        "nothing is 72 h old yet"
    );

    let later = SystemTime::now() + Duration::from_secs(73 * 3600);
    let preview = store.preview_retention(later);
    assert_eq!(segments(&backend), before, "a preview removes nothing");
    assert_eq!(store.queue_bounds("t", 1).unwrap().min, 0);
    let report = store.enforce_retention(later).await?;
    assert_eq!(preview, report);
    assert_eq!(report.removed_segments, before[..before.len() - 1].to_vec());
    assert_eq!(segments(&backend), vec![before.last().unwrap().clone()]);

    let q0 = store.queue_bounds("t", 0).unwrap();
    let q1 = store.queue_bounds("t", 1).unwrap();
    assert_eq!(q1, QueueBounds { min: 10, max: 10 });
    assert!(q0.min > 0 && q0.min < q0.max);
    let moved: Vec<_> = report
        .advanced
        .iter()
        .map(|a| (a.queue_id, a.old_min, a.new_min))
        .collect();
    assert_eq!(moved, vec![(0, 0, q0.min), (1, 0, 10)]);
    let first = store.read_queue("t", 0, 0, 1, usize::MAX).await?;
    assert_eq!(
        first[0].queue_offset, q0.min,
        "reads start at the new minimum"
    );

    // Offsets are never reused, also after a restart, even for a queue emptied entirely.
    store.close().await?;
    let store = Store::open_with_backend(Arc::new(backend.crash()), config()).await?;
    assert_eq!(store.queue_bounds("t", 0), Some(q0));
    assert_eq!(store.queue_bounds("t", 1), Some(q1));
    let a = store.append(NewRecord::new("t", 1, "later")).await?;
    assert_eq!(a.queue_offset, 10);
    Ok(())
}

#[tokio::test]
async fn old_segments_are_removed_past_the_disk_usage_ceiling() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let mut c = config();
    c.max_disk_usage = Some(3 * SEGMENT);
    let store = Store::open_with_backend(Arc::new(backend.clone()), c).await?;
    fill(&store, 6).await?;
    let before = segments(&backend);
    assert!(before.len() >= 6);
    let report = store.enforce_retention(SystemTime::now()).await?;
    assert_eq!(segments(&backend), before[before.len() - 3..].to_vec());
    assert_eq!(report.removed_segments, before[..before.len() - 3].to_vec());
    assert_eq!(report.removed_bytes, (before.len() as u64 - 3) * SEGMENT);
    assert!(store.queue_bounds("t", 0).unwrap().min > 0);
    Ok(())
}

#[tokio::test]
async fn a_disk_usage_ceiling_below_two_segments_is_refused_at_open() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    for max in [1, SEGMENT, 2 * SEGMENT - 1] {
        let mut c = config();
        c.max_disk_usage = Some(max);
        let err = Store::open_with_backend(Arc::new(backend.clone()), c)
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::InvalidConfig(_)), "{err}");
        let msg = err.to_string();
        // The message names the setting, the value given and the minimum.
        assert!(msg.contains("max_disk_usage"), "{msg}");
        assert!(msg.contains(&format!("{max} bytes")), "{msg}");
        assert!(msg.contains(&format!("{} bytes", 2 * SEGMENT)), "{msg}");
    }
    assert!(segments(&backend).is_empty(), "nothing was created");
    Ok(())
}

#[tokio::test]
async fn a_ceiling_of_two_segments_keeps_the_previous_segment_after_a_roll() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let mut c = config();
    c.max_disk_usage = Some(2 * SEGMENT);
    let store = Store::open_with_backend(Arc::new(backend.clone()), c).await?;
    fill(&store, 1).await?;
    while segments(&backend).len() < 2 {
        let _ = store
            .append(NewRecord::new("t", 0, vec![b'a'; 1000]))
            .await?;
    }
    let report = store.enforce_retention(SystemTime::now()).await?;
    assert!(report.removed_segments.is_empty(), "{report:?}");
    assert_eq!(store.queue_bounds("t", 0).unwrap().min, 0);
    Ok(())
}

#[tokio::test]
async fn checkpoints_are_saved_and_loaded_atomically() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = Store::open_with_backend(Arc::new(backend.clone()), config()).await?;
    assert_eq!(store.load_checkpoint("group-a").await?, None);
    store
        .save_checkpoint("group-a", Bytes::from_static(b"offsets v1"))
        .await?;
    store
        .save_checkpoint("group-a", Bytes::from_static(b"offsets v2"))
        .await?;
    assert_eq!(
        store.load_checkpoint("group-a").await?.as_deref(),
        Some(&b"offsets v2"[..])
    );

    // A save whose fsync fails leaves the previous version in place, also after a crash.
    backend.fail_sync(true);
    assert!(
        store
            .save_checkpoint("group-a", Bytes::from_static(b"offsets v3"))
            .await
            .is_err()
    );
    backend.fail_sync(false);
    let crashed = backend.crash();
    let store = Store::open_with_backend(Arc::new(crashed), config()).await?;
    assert_eq!(
        store.load_checkpoint("group-a").await?.as_deref(),
        Some(&b"offsets v2"[..])
    );
    assert!(matches!(
        store.save_checkpoint("../evil", Bytes::new()).await,
        Err(StorageError::InvalidCheckpointName(_))
    ));
    Ok(())
}

#[tokio::test]
async fn checkpoints_persist_on_real_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    store
        .save_checkpoint("consumer.offsets", Bytes::from_static(b"42"))
        .await?;
    store.close().await?;
    let store = Store::open(dir.path(), config()).await?;
    assert_eq!(
        store.load_checkpoint("consumer.offsets").await?.as_deref(),
        Some(&b"42"[..])
    );
    Ok(())
}
