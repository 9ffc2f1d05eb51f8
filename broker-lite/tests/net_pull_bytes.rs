//! A pull answer always fits one frame (issue 12, item 4): the broker bounds a pull by bytes
//! as well as by count, so large messages are delivered, a few per pull, instead of stranding
//! in flight behind an answer the server cannot send.

use std::collections::BTreeSet;
use std::time::Duration;

use broker_lite::client::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::protocol::Message;

async fn start() -> (tempfile::TempDir, EmbeddedBroker) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::default();
    config.broker.store.segment_size = 64 << 20;
    config.broker.store.max_record_size = 4 << 20;
    config.broker.background_tasks = false;
    let broker = embedded::start(dir.path(), config).await.unwrap();
    (dir, broker)
}

/// Sends `count` messages of `size` bytes, then pulls `count` at a time until every one was
/// delivered (each pull must succeed) and acks them. Returns how many pulls it took.
async fn send_then_pull_all(count: usize, size: usize) -> usize {
    let (_dir, broker) = start().await;
    let producer = Producer::connect(broker.addr(), ProducerConfig::default())
        .await
        .unwrap();
    let consumer = Consumer::connect(broker.addr(), ConsumerConfig::new("billing", "big"))
        .await
        .unwrap();
    let mut sent = BTreeSet::new();
    for i in 0..count {
        let body = vec![i as u8; size];
        let r = producer.send(Message::new("big", body)).await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        sent.insert(r.message_id);
    }
    let mut received = BTreeSet::new();
    let mut pulls = 0;
    while received.len() < count {
        pulls += 1;
        assert!(
            pulls <= count,
            "no progress: {} of {count} after {pulls} pulls",
            received.len()
        );
        let deliveries = consumer
            .pull(count as u32, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("pull {pulls} failed: {e}"));
        for d in &deliveries {
            assert_eq!(d.message.body.len(), size);
            assert!(received.insert(d.message.message_id), "delivered twice");
            consumer.ack(d).await.unwrap();
        }
    }
    assert_eq!(received, sent);
    assert!(consumer.pull(10, Duration::ZERO).await.unwrap().is_empty());
    consumer.close().await.unwrap();
    broker.shutdown().await.unwrap();
    pulls
}

#[tokio::test]
async fn three_messages_of_3_mib_are_all_delivered_over_tcp() {
    // 9 MiB do not fit the 8 MiB frame: two per pull, then one.
    let pulls = send_then_pull_all(3, 3 << 20).await;
    assert!(pulls >= 2, "{pulls} pulls");
}

#[tokio::test]
async fn many_messages_of_64_kib_are_all_delivered_over_tcp() {
    // 128 of 64 KiB are 8 MiB of bodies alone: more than one frame.
    let pulls = send_then_pull_all(128, 64 << 10).await;
    assert!(pulls >= 2, "{pulls} pulls");
}
