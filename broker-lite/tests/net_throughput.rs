//! A throughput smoke run over TCP, ignored by default (it measures, it does not assert timings):
//! `cargo test -p broker-lite --release --test net_throughput -- --ignored --nocapture`
//!
//! 16 producers, each on its own connection, send 1 KiB messages to an embedded broker under
//! SYNC_FLUSH and wait for every SEND_OK, as the benchmark issue's scenario does.

use std::time::Instant;

use broker_lite::client::{Producer, ProducerConfig};
use broker_lite::embedded::{self, EmbeddedConfig};
use broker_lite::protocol::Message;
use bytes::Bytes;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, run by hand"]
async fn sync_flush_16_producers_1_kib_over_tcp() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = EmbeddedConfig::default();
    config.broker.store.segment_size = 64 << 20;
    let broker = embedded::start(dir.path(), config).await?;
    let body = Bytes::from(vec![b'x'; 1024]);
    let per_producer = 2_000;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..16 {
        let producer = Producer::connect(broker.addr(), ProducerConfig::default()).await?;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_producer {
                let message = Message::new("bench", body.clone()).with_key(format!("{p}-{i}"));
                let result = producer.send(message).await?;
                anyhow::ensure!(result.is_ok(), "status {:?}", result.status);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let total = 16 * per_producer;
    println!(
        "{total} SEND_OK of 1 KiB from 16 producers over TCP in {elapsed:?}: {:.0} msg/s",
        total as f64 / elapsed.as_secs_f64()
    );
    broker.shutdown().await?;
    Ok(())
}
