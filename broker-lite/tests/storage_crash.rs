//! Crash consistency with the fault-injecting backend: lost unsynced writes, torn writes, flipped
//! bits and failing fsync (safeguard B1).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_lite::storage::backend::{FaultyBackend, StorageBackend};
use broker_lite::storage::{FlushOutcome, NewRecord, QueueBounds, StorageError, Store};
use tokio::sync::Notify;
use uuid::Uuid;

/// (message id, queue id, queue offset, body) of an acknowledged append.
type Acked = (Uuid, u32, u64, bytes::Bytes);

mod storage_common;

use storage_common::{FIRST_SEGMENT, async_config, config, open, verifying};

fn rec(i: u64) -> NewRecord {
    NewRecord::new(
        "t",
        (i % 4) as u32,
        format!("message {i} {}", "x".repeat((i % 700) as usize)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flushed_append_survives_a_crash() -> anyhow::Result<()> {
    for keep in [0usize, 1, 37, 200, 5000] {
        let backend = FaultyBackend::new();
        let store = open(&backend, config()).await?;
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let progress = Arc::new(Notify::new());
        let producers: Vec<_> = (0..8u64)
            .map(|p| {
                let (store, acked, progress) = (store.clone(), acked.clone(), progress.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        let r = rec(p * 100_000 + i);
                        let (id, q, body) = (r.message_id, r.queue_id, r.body.clone());
                        match store.append(r).await {
                            Ok(a) if a.outcome == FlushOutcome::Flushed => {
                                acked.lock().unwrap().push((id, q, a.queue_offset, body));
                                progress.notify_one();
                            }
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        while acked.lock().unwrap().len() < 400 {
            progress.notified().await;
        }
        // Everything acknowledged before the power cut must survive it.
        let (snapshot, after) = {
            let acked = acked.lock().unwrap();
            (acked.clone(), backend.crash_tearing_last_write(keep))
        };
        store.close().await.ok();
        for p in producers {
            p.abort();
        }

        let reopened = open(&after, config()).await?;
        for q in 0..4 {
            let bounds = reopened.queue_bounds("t", q).unwrap();
            let all = reopened
                .read_queue("t", q, 0, usize::MAX, usize::MAX)
                .await?;
            assert_eq!(all.len() as u64, bounds.max, "queue offsets stay dense");
            for (i, r) in all.iter().enumerate() {
                assert_eq!(r.queue_offset, i as u64);
            }
        }
        for (id, q, offset, body) in snapshot {
            let got = reopened.read_queue("t", q, offset, 1, usize::MAX).await?;
            assert_eq!(got[0].message_id, id, "keep={keep}");
            assert_eq!(got[0].body, body);
        }
        // The log keeps working after recovery.
        let a = reopened.append(rec(1)).await?;
        assert_eq!(a.outcome, FlushOutcome::Flushed);
    }
    Ok(())
}

#[tokio::test]
async fn a_torn_tail_is_cut_on_restart() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, async_config()).await?;
    for i in 0..5 {
        let _ = store.append(rec(i * 4)).await?;
    }
    store.flush().await?;
    let durable_end = store.progress().flushed;
    // Three more records in one write, never fsynced; the crash keeps a prefix of that write.
    let _ = store
        .append_batch(vec![rec(100), rec(104), rec(108)])
        .await?;
    let first_unsynced = rec(100).encoded_len();
    let after = backend.crash_tearing_last_write(first_unsynced + 20);

    let reopened = open(&after, async_config()).await?;
    // The complete first record of the torn write is valid and kept; the partial one is cut.
    assert_eq!(
        reopened.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 6 })
    );
    let end = durable_end + first_unsynced as u64;
    assert_eq!(reopened.progress().written, end);
    let seg = after.contents(FIRST_SEGMENT).unwrap();
    assert!(seg[end as usize..].iter().all(|b| *b == 0), "tail zeroed");
    let a = reopened.append(rec(200)).await?;
    assert_eq!(a.queue_offset, 6);
    assert_eq!(a.log_position, end);
    reopened.close().await?;
    let again = open(&after.crash(), config()).await?;
    assert_eq!(
        again.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 7 })
    );
    Ok(())
}

#[tokio::test]
async fn a_flipped_bit_below_the_durable_position_refuses_to_start() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let mut appended = Vec::new();
    for i in 0..5 {
        appended.push(store.append(rec(i)).await?);
    }
    store.close().await?;
    let victim = appended[2].log_position;
    backend.flip_bit(FIRST_SEGMENT, victim + 70, 3);

    let err = open(&backend, verifying()).await.unwrap_err();
    match &err {
        StorageError::Corrupt {
            segment, offset, ..
        } => {
            assert_eq!(segment, FIRST_SEGMENT);
            assert_eq!(*offset, victim);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(FIRST_SEGMENT) && msg.contains(&format!("offset {victim}")),
        "{msg}"
    );
    Ok(())
}

#[tokio::test]
async fn a_corrupt_record_on_real_files_names_segment_and_offset() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    let mut last = None;
    for i in 0..3 {
        last = Some(store.append(rec(i)).await?);
    }
    store.close().await?;
    let path = dir.path().join(FIRST_SEGMENT);
    let mut bytes = std::fs::read(&path)?;
    let pos = last.unwrap().log_position as usize;
    bytes[pos + 60] ^= 0x40;
    std::fs::write(&path, bytes)?;
    let err = Store::open(dir.path(), verifying()).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { offset, .. } if offset == pos as u64),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn garbage_after_the_durable_position_on_real_files_is_cut() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config()).await?;
    for i in 0..3 {
        let _ = store.append(rec(i * 4)).await?;
    }
    store.close().await?;
    let end = store.progress().flushed;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(FIRST_SEGMENT))?;
    // A partly written record: a plausible length and checksum, then nothing.
    std::os::unix::fs::FileExt::write_all_at(&file, &[200, 0, 0, 0, 1, 2, 3, 4, 1, 0], end)?;
    drop(file);
    let store = Store::open(dir.path(), config()).await?;
    assert_eq!(
        store.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 3 })
    );
    assert_eq!(store.append(rec(0)).await?.log_position, end);
    Ok(())
}

#[tokio::test]
async fn leftover_temporary_files_are_removed_on_open() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    backend
        .open("cp-offsets.ckpt.tmp", true)?
        .write_all_at(b"half", 0)?;
    let store = open(&backend, config()).await?;
    assert!(!backend.list()?.iter().any(|n| n.ends_with(".tmp")));
    store.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_lost_batch_across_a_segment_roll_is_cut_with_its_new_segment() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, async_config()).await?;
    let big = |i: u64| NewRecord::new("t", 0, format!("{i:04}").repeat(1000));
    for i in 0..15 {
        let _ = store.append(big(i)).await?;
    }
    store.flush().await?;
    let durable = store.progress().flushed;
    // One unsynced batch that fills the first segment and starts the second.
    let appended = store.append_batch((15..20).map(big).collect()).await?;
    assert!(appended.last().unwrap().log_position >= 64 * 1024);
    let after = backend.crash();
    assert_eq!(
        after.list()?.iter().filter(|n| n.len() == 20).count(),
        2,
        "the new segment file exists"
    );

    let reopened = open(&after, async_config()).await?;
    assert_eq!(
        reopened.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 15 })
    );
    assert_eq!(reopened.progress().written, durable);
    assert_eq!(after.list()?.iter().filter(|n| n.len() == 20).count(), 1);
    let a = reopened.append(big(15)).await?;
    assert_eq!((a.queue_offset, a.log_position), (15, durable));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_durable_position_is_checkpointed_on_an_interval() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let mut c = config();
    c.checkpoint_interval = Duration::from_secs(1);
    // Paused time jumps ahead while the test waits for the writer thread; keep the deadline far.
    c.sync_flush_timeout = Duration::from_secs(3600);
    let store = open(&backend, c.clone()).await?;
    let first = store.append(rec(0)).await?;
    let _ = store.append(rec(4)).await?;
    let end = store.progress().flushed;
    // Bounded in virtual time, so that a bug fails the test instead of hanging it.
    let mut progress = store.subscribe();
    let waited = progress.wait_for(|p| p.checkpointed >= end);
    tokio::time::timeout(Duration::from_secs(60), waited).await??;

    // Without a clean close, damage to a checkpointed record still stops recovery.
    let after = backend.crash();
    after.flip_bit(FIRST_SEGMENT, first.log_position + 60, 0);
    c.verify_log_on_open = true;
    assert!(matches!(
        open(&after, c).await,
        Err(StorageError::Corrupt { offset: 0, .. })
    ));
    Ok(())
}
