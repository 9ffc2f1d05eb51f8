//! Flush behaviour under faults (safeguard B1): failing fsync and writes, a stalled disk, group
//! commit, and what readers see before the fsync.

use std::sync::Arc;
use std::time::Duration;

use broker_lite::storage::backend::FaultyBackend;
use broker_lite::storage::{
    FlushMode, FlushOutcome, NewRecord, QueueBounds, StorageError, Store, StoreConfig,
};
use futures::future::join_all;

fn config() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.segment_size = 64 * 1024;
    c.max_record_size = 16 * 1024;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

fn async_config() -> StoreConfig {
    let mut c = config();
    c.flush_mode = FlushMode::Async {
        interval: Duration::from_secs(3600),
    };
    c
}

async fn open(backend: &FaultyBackend, c: StoreConfig) -> Result<Store, StorageError> {
    Store::open_with_backend(Arc::new(backend.clone()), c).await
}

fn rec(i: u64) -> NewRecord {
    NewRecord::new("t", (i % 4) as u32, format!("message {i}"))
}

#[tokio::test]
async fn a_failed_fsync_is_fatal_and_never_answered_flushed() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let ok = store.append(rec(0)).await?;
    assert_eq!(ok.outcome, FlushOutcome::Flushed);
    backend.fail_sync(true);
    let results = join_all((1..10).map(|i| store.append(rec(i)))).await;
    for r in results {
        assert!(matches!(r, Err(StorageError::Failed(_))), "{r:?}");
    }
    assert!(store.progress().failed);
    // Even with a healthy disk again, the store stays failed until restarted.
    backend.fail_sync(false);
    let err = store.append(rec(11)).await.unwrap_err();
    assert!(err.to_string().contains("restart"), "{err}");
    assert!(matches!(store.flush().await, Err(StorageError::Failed(_))));
    // Readers never see what was not flushed.
    assert_eq!(
        store.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 1 })
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_write_is_fatal_too() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, async_config()).await?;
    backend.fail_write(true);
    assert!(matches!(
        store.append(rec(0)).await,
        Err(StorageError::Failed(_))
    ));
    backend.fail_write(false);
    assert!(matches!(
        store.append(rec(1)).await,
        Err(StorageError::Failed(_))
    ));
    Ok(())
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let mut c = config();
    c.segment_size = 1 << 20;
    let store = open(&backend, c).await?;
    let before = backend.sync_count();
    // Stall the disk on the first fsync so that the other appends queue up behind it.
    backend.hold_sync(true);
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.append(rec(0)).await }
    });
    while backend.syncs_waiting() == 0 {
        tokio::task::yield_now().await;
    }
    let mut rest = Box::pin(join_all((1..64).map(|i| store.append(rec(i)))));
    assert!(futures::poll!(&mut rest).is_pending());
    backend.hold_sync(false);
    assert_eq!(first.await??.outcome, FlushOutcome::Flushed);
    for r in rest.await {
        assert_eq!(r?.outcome, FlushOutcome::Flushed);
    }
    let fsyncs = backend.sync_count() - before;
    assert!(fsyncs < 64, "{fsyncs} fsyncs for 64 appends");
    Ok(())
}

#[tokio::test]
async fn readers_only_see_flushed_records_under_sync_flush() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    backend.hold_sync(true);
    let pending = tokio::spawn({
        let store = store.clone();
        async move { store.append(rec(0)).await }
    });
    while backend.syncs_waiting() == 0 {
        tokio::task::yield_now().await;
    }
    assert!(store.progress().written > 0);
    assert!(store.read_queue("t", 0, 0, 10, 1 << 20).await?.is_empty());
    assert_eq!(
        store.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 0 })
    );
    backend.hold_sync(false);
    let a = pending.await??;
    assert_eq!(store.read_queue("t", 0, 0, 10, 1 << 20).await?.len(), 1);
    assert_eq!(store.read_at(a.log_position).await?.queue_offset, 0);
    Ok(())
}

#[tokio::test]
async fn a_stalled_fsync_answers_flush_disk_timeout() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let mut c = config();
    c.sync_flush_timeout = Duration::from_millis(50);
    let store = open(&backend, c).await?;
    backend.hold_sync(true);
    let a = store.append(rec(0)).await?;
    assert_eq!(a.outcome, FlushOutcome::FlushDiskTimeout);
    backend.hold_sync(false);
    // The record stays written and becomes durable with the next fsync.
    store.flush().await?;
    assert_eq!(
        store.read_at(a.log_position).await?.queue_offset,
        a.queue_offset
    );
    Ok(())
}

/// Issue 12 item 7: with the writer's queue full all the time, the async flusher still fsyncs once
/// per interval. Paused time: the count is compared with the intervals that elapsed, not with a
/// wall-clock duration.
#[tokio::test(start_paused = true)]
async fn async_flush_keeps_its_interval_while_the_writer_is_saturated() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let interval = Duration::from_millis(100);
    let mut c = config();
    c.flush_mode = FlushMode::Async { interval };
    // A queue of one is full whenever a producer waits, which all of them always do here.
    c.queue_capacity = 1;
    // No segment roll (its fsyncs would count) and no append deadline in the virtual hour.
    c.segment_size = 1 << 20;
    c.sync_flush_timeout = Duration::from_secs(3600);
    let store = open(&backend, c).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producers: Vec<_> = (0..8u64)
        .map(|p| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = p;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let a = store.append(rec(i)).await?;
                    assert_eq!(a.outcome, FlushOutcome::InMemory);
                    i += 8;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let before = backend.sync_count();
    let start = tokio::time::Instant::now();
    tokio::time::sleep(interval * 20).await;
    let intervals = (start.elapsed().as_nanos() / interval.as_nanos()) as u64;
    let fsyncs = backend.sync_count() - before;
    let written = store.progress().written;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in producers {
        p.await??;
    }
    assert!(intervals >= 20, "{intervals} intervals elapsed");
    assert!(written > 0);
    // The tick at the very end may still be running.
    assert!(
        fsyncs + 1 >= intervals,
        "{fsyncs} fsyncs in {intervals} flush intervals under load"
    );
    Ok(())
}
