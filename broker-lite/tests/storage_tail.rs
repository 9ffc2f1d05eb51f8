//! Where the log ends on open (issue 12 item 11): damage above the checkpointed durable position is
//! refused unless it is a true torn tail, and after a failed fsync nothing beyond the last
//! successful one is trusted, even when it reads back fine ("fsyncgate").

use broker_lite::storage::backend::FaultyBackend;
use broker_lite::storage::{Appended, FlushOutcome, NewRecord, QueueBounds, StorageError, Store};

mod storage_common;

use storage_common::{FIRST_SEGMENT, async_config, config, open};

fn rec(i: u64) -> NewRecord {
    NewRecord::new("t", 0, format!("message {i} {}", "x".repeat(900)))
}

async fn append_flushed(
    store: &Store,
    range: std::ops::Range<u64>,
) -> anyhow::Result<Vec<Appended>> {
    let mut out = Vec::new();
    for i in range {
        let a = store.append(rec(i)).await?;
        assert_eq!(a.outcome, FlushOutcome::Flushed);
        out.push(a);
    }
    Ok(out)
}

fn expect_corrupt(err: StorageError, segment: &str, offset: u64) -> String {
    match &err {
        StorageError::Corrupt {
            segment: s,
            offset: o,
            ..
        } => assert_eq!((s.as_str(), *o), (segment, offset), "{err}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(segment) && msg.contains(&format!("offset {offset}")),
        "{msg}"
    );
    msg
}

#[tokio::test]
async fn a_damaged_record_followed_by_flushed_ones_is_refused_not_cut() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let acked = append_flushed(&store, 0..5).await?;
    // A power cut, then media damage in the third record: all five were acknowledged `Flushed`,
    // none is below the checkpointed durable position.
    let after = backend.crash();
    drop(store);
    after.flip_bit(FIRST_SEGMENT, acked[2].log_position + 70, 1);
    let err = open(&after, config()).await.unwrap_err();
    let msg = expect_corrupt(err, FIRST_SEGMENT, acked[2].log_position);
    assert!(
        msg.contains(&format!(
            "valid record follows at offset {}",
            acked[3].log_position
        )),
        "{msg}"
    );
    assert!(msg.contains("truncate"), "says what to do: {msg}");
    // Nothing was cut: with the bit restored the log opens whole.
    after.flip_bit(FIRST_SEGMENT, acked[2].log_position + 70, 1);
    let store = open(&after, config()).await?;
    assert_eq!(
        store.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 5 })
    );
    Ok(())
}

#[tokio::test]
async fn damage_before_a_later_segment_with_data_is_refused() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let mut acked = Vec::new();
    let mut i = 0;
    while acked
        .last()
        .is_none_or(|a: &Appended| a.log_position < 64 * 1024)
    {
        acked.extend(append_flushed(&store, i..i + 1).await?);
        i += 1;
    }
    let after = backend.crash();
    drop(store);
    // The last record of the first segment: nothing valid follows it there, but the second
    // segment holds acknowledged records.
    let victim = acked[acked.len() - 2].log_position;
    after.flip_bit(FIRST_SEGMENT, victim + 70, 1);
    let err = open(&after, config()).await.unwrap_err();
    let msg = expect_corrupt(err, FIRST_SEGMENT, victim);
    assert!(msg.contains("00000000000000065536 holds data"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn a_true_torn_tail_is_still_cut() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let acked = append_flushed(&store, 0..3).await?;
    let end = store.progress().flushed;
    // The next batch is written but the power goes before its fsync: only a prefix survives.
    backend.hold_sync(true);
    let pending = tokio::spawn({
        let store = store.clone();
        async move { store.append_batch(vec![rec(3), rec(4)]).await }
    });
    while backend.syncs_waiting() == 0 {
        tokio::task::yield_now().await;
    }
    let after = backend.crash_tearing_last_write(rec(3).encoded_len() + 100);
    backend.hold_sync(false);
    let _ = pending.await?;
    let reopened = open(&after, config()).await?;
    // The complete record of the torn write is kept, the partial one cut.
    assert_eq!(
        reopened.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 4 })
    );
    assert_eq!(
        reopened.progress().written,
        end + rec(3).encoded_len() as u64
    );
    assert_eq!(acked.len(), 3);
    Ok(())
}

#[tokio::test]
async fn records_written_after_a_failed_fsync_are_not_trusted_on_restart() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    append_flushed(&store, 0..3).await?;
    let durable = store.progress().flushed;
    backend.fail_sync(true);
    assert!(matches!(
        store.append(rec(3)).await,
        Err(StorageError::Failed(_))
    ));
    // The disk answers again; the broker is restarted without a power cut, so the page cache
    // (what `backend` shows) still holds the record whose fsync failed.
    backend.fail_sync(false);
    assert!(store.close().await.is_err());
    let reopened = open(&backend, config()).await?;
    assert_eq!(
        reopened.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 3 })
    );
    assert_eq!(reopened.progress().written, durable);
    let a = reopened.append(rec(4)).await?;
    assert_eq!((a.queue_offset, a.log_position), (3, durable));
    // The cut is durable: a power cut now changes nothing.
    reopened.close().await?;
    let again = open(&backend.crash(), config()).await?;
    assert_eq!(
        again.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 4 })
    );
    Ok(())
}

#[tokio::test]
async fn a_dropped_failed_store_still_fences_what_it_never_fsynced() -> anyhow::Result<()> {
    let backend = FaultyBackend::new();
    let store = open(&backend, async_config()).await?;
    for i in 0..2 {
        let _ = store.append(rec(i)).await?;
    }
    let durable = store.flush().await?;
    for i in 2..4 {
        assert_eq!(store.append(rec(i)).await?.outcome, FlushOutcome::InMemory);
    }
    backend.fail_sync(true);
    assert!(matches!(store.flush().await, Err(StorageError::Failed(_))));
    backend.fail_sync(false);
    drop(store);
    let reopened = open(&backend, async_config()).await?;
    assert_eq!(
        reopened.queue_bounds("t", 0),
        Some(QueueBounds { min: 0, max: 2 })
    );
    assert_eq!(reopened.progress().written, durable);
    Ok(())
}

#[tokio::test]
async fn under_sync_flush_a_segment_is_durable_before_the_next_one_gets_data() -> anyhow::Result<()>
{
    let backend = FaultyBackend::new();
    let store = open(&backend, config()).await?;
    let len = rec(0).encoded_len() as u64;
    let mut i = 0;
    while store.progress().written + 2 * len <= 64 * 1024 {
        append_flushed(&store, i..i + 1).await?;
        i += 1;
    }
    // One batch that ends the first segment and starts the second; the first one's fsync fails.
    backend.fail_sync_of(Some(FIRST_SEGMENT));
    let batch = (i..i + 4).map(rec).collect();
    assert!(matches!(
        store.append_batch(batch).await,
        Err(StorageError::Failed(_))
    ));
    // Nothing reached the second segment: recovery can read data there as proof that everything
    // before it is durable.
    let second = backend.contents("00000000000000065536").expect("created");
    assert!(
        second.iter().all(|b| *b == 0),
        "the second segment got data first"
    );
    Ok(())
}
