//! Appending, reading back and reopening the commit log on real files.

use std::sync::Arc;
use std::time::Duration;

use broker_lite::storage::backend::FaultyBackend;
use broker_lite::storage::{
    FlushMode, FlushOutcome, NewRecord, QueueBounds, StorageError, Store, StoreConfig,
};
use bytes::Bytes;

fn config() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.segment_size = 64 * 1024;
    c.max_record_size = 16 * 1024;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

fn body(queue: u32, i: u64) -> Bytes {
    let mut v = format!("q{queue}-m{i}-").into_bytes();
    v.resize(1000, b'x');
    Bytes::from(v)
}

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn records_span_segments_and_read_back_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    for i in 0..150u64 {
        for q in 0..2 {
            let rec = NewRecord::new("orders", q, body(q, i))
                .with_key(format!("k{i}"))
                .with_tag("created")
                .with_property("n", i.to_string());
            let a = store.append(rec).await?;
            assert_eq!(a.queue_offset, i);
            assert_eq!(a.outcome, FlushOutcome::Flushed);
        }
    }
    assert!(
        segment_files(dir.path()).len() >= 4,
        "300 KiB spread over 64 KiB segments"
    );
    assert_eq!(
        store.queue_bounds("orders", 1),
        Some(QueueBounds { min: 0, max: 150 })
    );
    assert_eq!(store.queue_bounds("orders", 2), None);
    assert_eq!(
        store.queues(),
        vec![("orders".to_string(), 0), ("orders".to_string(), 1)]
    );

    let mut next = 0;
    while next < 150 {
        let batch = store.read_queue("orders", 1, next, 32, 1 << 20).await?;
        assert!(!batch.is_empty());
        for r in &batch {
            assert_eq!(r.queue_offset, next);
            assert_eq!(r.body, body(1, next));
            assert_eq!(r.key.as_deref(), Some(format!("k{next}").as_str()));
            assert_eq!(r.properties["n"], next.to_string());
            let same = store.read_at(r.log_position).await?;
            assert_eq!(&same, r);
            next += 1;
        }
    }
    // max_bytes limits a batch but always returns at least one record.
    assert_eq!(store.read_queue("orders", 0, 0, 100, 10).await?.len(), 1);
    assert_eq!(store.read_queue("orders", 0, 0, 100, 2500).await?.len(), 2);
    assert!(
        store
            .read_queue("orders", 0, 150, 10, 1 << 20)
            .await?
            .is_empty()
    );
    assert!(matches!(
        store.read_at(3).await,
        Err(StorageError::NotFound(3))
    ));
    store.close().await?;
    Ok(())
}

#[tokio::test]
async fn reopening_rebuilds_the_index_and_offsets_continue() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    let batch: Vec<_> = (0..100)
        .map(|i| NewRecord::new("t", (i % 3) as u32, body(0, i)))
        .collect();
    let appended = store.append_batch(batch).await?;
    assert_eq!(appended.len(), 100);
    assert_eq!(appended[99].queue_offset, 33);
    store.close().await?;
    assert!(matches!(
        store.append(NewRecord::new("t", 0, "late")).await,
        Err(StorageError::Closed)
    ));

    let store = Store::open(dir.path(), config()).await?;
    assert_eq!(
        store.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 34 })
    );
    assert_eq!(
        store.queue_bounds("t", 2),
        Some(QueueBounds { min: 0, max: 33 })
    );
    let a = store
        .append(NewRecord::new("t", 0, "after restart"))
        .await?;
    assert_eq!(a.queue_offset, 34);
    let all = store.read_queue("t", 0, 0, 1000, usize::MAX).await?;
    assert_eq!(all.len(), 35);
    assert_eq!(all[10].body, body(0, 30));
    // Dropping without close is like a process crash: the page cache keeps the data.
    drop(store);

    let store = Store::open(dir.path(), config()).await?;
    assert_eq!(
        store.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 35 })
    );
    store.close().await?;
    Ok(())
}

#[tokio::test]
async fn bad_records_are_refused_before_writing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    let err = store
        .append(NewRecord::new("t", 0, vec![0u8; 20_000]))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StorageError::RecordTooLarge { limit: 16384, .. }
    ));
    assert!(err.to_string().contains("16384"), "{err}");
    assert!(matches!(
        store.append(NewRecord::new("", 0, "x")).await,
        Err(StorageError::InvalidRecord(_))
    ));
    assert_eq!(store.progress().written, 0);
    let mut bad = config();
    bad.max_record_size = 64 * 1024;
    assert!(matches!(
        Store::open(dir.path(), bad).await,
        Err(StorageError::InvalidConfig(_))
    ));
    Ok(())
}

#[tokio::test]
async fn async_flush_acknowledges_from_memory_and_flush_makes_durable() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let mut c = config();
    c.flush_mode = FlushMode::Async {
        interval: Duration::from_secs(3600),
    };
    let store = Store::open_with_backend(Arc::new(backend.clone()), c.clone()).await?;
    let a = store.append(NewRecord::new("t", 0, "one")).await?;
    assert_eq!(a.outcome, FlushOutcome::InMemory);
    // Readers see written records under async flush.
    assert_eq!(store.read_queue("t", 0, 0, 10, 1 << 20).await?.len(), 1);
    assert!(store.progress().flushed < store.progress().written);

    // The loss window: a power cut now loses the acknowledged record.
    let lost = Store::open_with_backend(Arc::new(backend.crash()), c.clone()).await?;
    assert_eq!(lost.queue_bounds("t", 0), None);

    let flushed = store.flush().await?;
    assert_eq!(flushed, store.progress().written);
    let kept = Store::open_with_backend(Arc::new(backend.crash()), c).await?;
    assert_eq!(
        kept.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 1 })
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn async_flush_fsyncs_on_its_interval() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let mut c = config();
    c.flush_mode = FlushMode::ASYNC_DEFAULT;
    c.sync_flush_timeout = Duration::from_secs(3600);
    let store = Store::open_with_backend(Arc::new(backend.clone()), c).await?;
    let syncs = backend.sync_count();
    let a = store.append(NewRecord::new("t", 0, "one")).await?;
    assert_eq!(a.outcome, FlushOutcome::InMemory);
    let end = store.progress().written;
    // Nobody calls flush: paused time jumps to the next flush tick once the test is idle (possibly
    // already while the append waited for the writer thread).
    let mut progress = store.subscribe();
    let waited = progress.wait_for(|p| p.flushed >= end);
    tokio::time::timeout(Duration::from_secs(60), waited).await??;
    assert!(backend.sync_count() > syncs);
    assert!(
        backend
            .crash()
            .contents("00000000000000000000")
            .is_some_and(|s| s.windows(3).any(|w| w == b"one"))
    );
    Ok(())
}

#[tokio::test]
async fn subscribers_are_woken_by_new_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    let mut progress = store.subscribe();
    progress.mark_unchanged();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            progress.changed().await.unwrap();
            loop {
                let records = store.read_queue("t", 0, 0, 10, 1 << 20).await.unwrap();
                if !records.is_empty() {
                    return records;
                }
                progress.changed().await.unwrap();
            }
        })
    };
    let _ = store.append(NewRecord::new("t", 0, "wake up")).await?;
    assert_eq!(&reader.await?[0].body[..], b"wake up");
    Ok(())
}

#[tokio::test]
async fn a_data_directory_is_used_by_one_store_at_a_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    let err = Store::open(dir.path(), config()).await.unwrap_err();
    assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    store.close().await?;
    assert!(matches!(
        store.save_checkpoint("x", Bytes::new()).await,
        Err(StorageError::Closed)
    ));
    let again = Store::open(dir.path(), config()).await?;
    drop(again);
    let _third = Store::open(dir.path(), config()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_frees_its_directory_for_the_next_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = config();
    c.checkpoint_interval = Duration::from_millis(1);
    for i in 0..20u64 {
        // Dropping waits for the dropped store's I/O, so reopening at once is safe.
        let store = Store::open(dir.path(), c.clone()).await?;
        assert_eq!(store.queue_bounds("t", 0).map_or(0, |b| b.max), i);
        let _ = store.append(NewRecord::new("t", 0, "x")).await?;
    }
    Ok(())
}
