//! A throughput smoke run, ignored by default (it measures, it does not assert timings):
//! `cargo test -p broker-lite --release --test storage_throughput -- --ignored --nocapture`

use std::time::{Duration, Instant};

use broker_lite::storage::{FlushOutcome, NewRecord, Store, StoreConfig};
use bytes::Bytes;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, run by hand"]
async fn sync_flush_16_producers_1_kib() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = StoreConfig::default();
    config.segment_size = 64 << 20;
    config.checkpoint_interval = Duration::from_secs(1);
    let store = Store::open(dir.path(), config).await?;
    let body = Bytes::from(vec![b'x'; 1024]);
    let per_producer = 2_000;
    let start = Instant::now();
    let tasks: Vec<_> = (0..16u32)
        .map(|p| {
            let (store, body) = (store.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..per_producer {
                    let a = store
                        .append(NewRecord::new("bench", p % 4, body.clone()))
                        .await?;
                    assert_eq!(a.outcome, FlushOutcome::Flushed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let total = 16 * per_producer;
    println!(
        "{total} sync appends of 1 KiB from 16 producers in {elapsed:?}: {:.0} msg/s",
        total as f64 / elapsed.as_secs_f64()
    );
    store.close().await?;
    Ok(())
}
