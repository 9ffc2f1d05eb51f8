//! A model check: random appends, flushes and crashes (with torn writes) against the in-memory
//! fault-injecting backend. After every crash the recovered log must be a prefix of what was
//! appended that holds at least everything that was flushed, with dense queue offsets.

use std::sync::Arc;
use std::time::Duration;

use broker_lite::storage::backend::FaultyBackend;
use broker_lite::storage::{FlushMode, FlushOutcome, NewRecord, Store, StoreConfig};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch with these body sizes, to queue `q`.
    Append(u32, Vec<usize>),
    Flush,
    /// Power cut; the first `keep` bytes of the last unsynced write survive.
    Crash(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3u32, proptest::collection::vec(0..900usize, 1..6)).prop_map(|(q, b)| Op::Append(q, b)),
        2 => Just(Op::Flush),
        1 => (0..3000usize).prop_map(Op::Crash),
    ]
}

fn config(sync: bool) -> StoreConfig {
    let mut c = StoreConfig::default();
    c.segment_size = 4096;
    c.max_record_size = 1024;
    c.checkpoint_interval = Duration::from_secs(3600);
    c.flush_mode = if sync {
        FlushMode::Sync
    } else {
        FlushMode::Async {
            interval: Duration::from_secs(3600),
        }
    };
    c
}

/// Every record in log order: (message id, queue id, queue offset).
async fn log_contents(store: &Store) -> Vec<(Uuid, u32, u64)> {
    let mut all = Vec::new();
    for (topic, q) in store.queues() {
        let bounds = store.queue_bounds(&topic, q).unwrap();
        let records = store
            .read_queue(&topic, q, 0, usize::MAX, usize::MAX)
            .await
            .unwrap();
        assert_eq!(records.len() as u64, bounds.max - bounds.min);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.queue_offset, bounds.min + i as u64, "dense offsets");
            all.push((r.log_position, r.message_id, q, r.queue_offset));
        }
    }
    all.sort();
    all.into_iter().map(|(_, id, q, o)| (id, q, o)).collect()
}

async fn run(sync: bool, ops: Vec<Op>) {
    let mut backend = FaultyBackend::new();
    let mut store = Store::open_with_backend(Arc::new(backend.clone()), config(sync))
        .await
        .unwrap();
    // The model: every appended record in order, and how many of them are known durable.
    let mut appended: Vec<(Uuid, u32, u64)> = Vec::new();
    let mut durable = 0usize;
    for op in ops {
        match op {
            Op::Append(q, sizes) => {
                let batch: Vec<_> = sizes
                    .iter()
                    .map(|n| NewRecord::new("t", q, vec![b'b'; *n]))
                    .collect();
                let ids: Vec<_> = batch.iter().map(|r| r.message_id).collect();
                let results = store.append_batch(batch).await.unwrap();
                for (id, a) in ids.into_iter().zip(&results) {
                    appended.push((id, q, a.queue_offset));
                }
                if sync {
                    assert!(results.iter().all(|a| a.outcome == FlushOutcome::Flushed));
                    durable = appended.len();
                }
            }
            Op::Flush => {
                store.flush().await.unwrap();
                durable = appended.len();
            }
            Op::Crash(keep) => {
                let after = backend.crash_tearing_last_write(keep);
                store.close().await.ok();
                backend = after;
                store = Store::open_with_backend(Arc::new(backend.clone()), config(sync))
                    .await
                    .unwrap();
                let recovered = log_contents(&store).await;
                assert!(recovered.len() >= durable, "lost a durable record");
                assert_eq!(recovered[..], appended[..recovered.len()], "not a prefix");
                appended.truncate(recovered.len());
                durable = appended.len();
            }
        }
    }
    assert_eq!(log_contents(&store).await, appended);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn async_flush_recovers_a_prefix(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(false, ops));
    }

    #[test]
    fn sync_flush_loses_nothing_acknowledged(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(true, ops));
    }
}
