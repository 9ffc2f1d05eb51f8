//! Dead-letter moves and re-drives settle the original only once the copy is durable (issue 12,
//! item 6), and "re-drive all" works for a dead-letter queue of any size (item 11).

mod broker_common;

use std::sync::Arc;
use std::time::Duration;

use broker_common::config;
use broker_lite::broker::{
    Broker, BrokerConfig, ConsumerSpec, Delivery, ManualClock, PullRequest, SendRequest,
};
use broker_lite::storage::FlushMode;
use broker_lite::storage::backend::FaultyBackend;

const GROUP: &str = "billing";
const CLIENT: &str = "billing-1";
const TOPIC: &str = "orders";

fn async_flush(c: &mut BrokerConfig) {
    // No fsync by the flusher during a test: only what the broker asks for is synced.
    c.store.flush_mode = FlushMode::Async {
        interval: Duration::from_secs(3600),
    };
}

/// A broker on `backend` with one message delivered to `CLIENT` and fsynced.
async fn delivered(backend: &FaultyBackend, c: BrokerConfig) -> (Broker, Delivery) {
    let b = Broker::open_with_backend(Arc::new(backend.clone()), c)
        .await
        .unwrap();
    b.create_topic(TOPIC, 1).await.unwrap();
    b.subscribe(ConsumerSpec::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap();
    let sent = b.send(SendRequest::new(TOPIC, "poison")).await.unwrap();
    assert!(sent.status.is_ok());
    b.store().flush().await.unwrap();
    let d = pull_one(&b).await.expect("delivered");
    (b, d)
}

/// Like [`delivered`], after a first message was dead-lettered: `%DLQ%billing` exists, so the
/// next dead letter needs no topic checkpoint (whose fsync would fail first).
async fn second_delivered(backend: &FaultyBackend, c: BrokerConfig) -> (Broker, Delivery) {
    let (b, first) = delivered(backend, c).await;
    b.dead_letter(&first.receipt, None).await.unwrap();
    let sent = b.send(SendRequest::new(TOPIC, "poison 2")).await.unwrap();
    assert!(sent.status.is_ok());
    b.store().flush().await.unwrap();
    let d = pull_one(&b).await.expect("delivered");
    (b, d)
}

async fn pull_one(b: &Broker) -> Option<Delivery> {
    b.pull(PullRequest::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap()
        .pop()
}

/// Releases held fsyncs when dropped, also when an assertion fails (the broker's drop waits
/// for an fsync in progress).
struct Held(FaultyBackend);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.hold_sync(false);
    }
}

#[tokio::test]
async fn a_dead_letter_not_fsynced_in_time_leaves_the_message_redeliverable() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let mut c = config(&clock);
    c.store.sync_flush_timeout = Duration::from_millis(100);
    let (b, d) = second_delivered(&backend, c).await;
    backend.hold_sync(true);
    let held = Held(backend.clone());
    let err = b.dead_letter(&d.receipt, Some("bad".into())).await;
    drop(held);
    assert!(err.is_err(), "the copy is not known durable: {err:?}");
    let again = pull_one(&b).await.expect("the original is due again");
    assert_eq!(again.message_id, d.message_id);
}

#[tokio::test]
async fn a_dead_letter_whose_fsync_fails_under_async_flush_leaves_the_message_redeliverable() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let mut c = config(&clock);
    async_flush(&mut c);
    let (b, d) = second_delivered(&backend, c).await;
    backend.fail_sync(true);
    let err = b.dead_letter(&d.receipt, None).await;
    assert!(err.is_err(), "the copy was never fsynced: {err:?}");
    let again = pull_one(&b).await.expect("the original is due again");
    assert_eq!(again.message_id, d.message_id);
}

#[tokio::test]
async fn a_failed_dead_letter_append_leaves_the_message_redeliverable() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let (b, d) = delivered(&backend, config(&clock)).await;
    backend.fail_write(true);
    assert!(b.dead_letter(&d.receipt, None).await.is_err());
    let again = pull_one(&b).await.expect("the original is due again");
    assert_eq!(again.message_id, d.message_id);
}

#[tokio::test]
async fn a_dead_letter_survives_a_power_cut_under_async_flush() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let mut c = config(&clock);
    async_flush(&mut c);
    let (b, d) = delivered(&backend, c.clone()).await;
    b.dead_letter(&d.receipt, Some("bad".into())).await.unwrap();
    // The ack reaches the disk with the offsets checkpoint.
    b.save_offsets().await.unwrap();
    let after = backend.crash();
    drop(b);

    let b = Broker::open_with_backend(Arc::new(after), c).await.unwrap();
    b.subscribe(ConsumerSpec::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap();
    let dead = b.dead_letters(GROUP, 10).await.unwrap();
    let redelivered = pull_one(&b).await;
    assert!(
        dead.iter().any(|m| m.message_id == d.message_id)
            || redelivered.is_some_and(|r| r.message_id == d.message_id),
        "the message is neither a dead letter nor redelivered: lost"
    );
    assert_eq!(dead.len(), 1, "the copy was fsynced before the ack");
}

#[tokio::test]
async fn a_redrive_whose_fsync_fails_keeps_the_dead_letter() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let mut c = config(&clock);
    async_flush(&mut c);
    let (b, d) = delivered(&backend, c).await;
    b.dead_letter(&d.receipt, None).await.unwrap();
    backend.fail_sync(true);
    let redriven = b.redrive_dead_letters(GROUP, None).await;
    assert!(
        redriven.is_err(),
        "the copies were never fsynced: {redriven:?}"
    );
    let dead = b.dead_letters(GROUP, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "not marked re-driven");
    assert_eq!(dead[0].message_id, d.message_id);
}

#[tokio::test]
async fn redrive_all_pages_a_dead_letter_queue_above_one_append() {
    let clock = ManualClock::starting_now();
    let mut c = config(&clock);
    c.store.segment_size = 64 << 20;
    c.store.max_record_size = 4 << 20;
    c.max_message_size = 3 << 20;
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::open(dir.path(), c).await.unwrap();
    b.create_topic(TOPIC, 1).await.unwrap();
    b.subscribe(ConsumerSpec::new(GROUP, CLIENT, TOPIC))
        .await
        .unwrap();
    // 23 dead letters of 3 MiB: 69 MiB, more than one append may carry (64 MiB).
    let count = 23;
    for i in 0..count {
        let body = vec![i as u8; 3 << 20];
        assert!(
            b.send(SendRequest::new(TOPIC, body))
                .await
                .unwrap()
                .status
                .is_ok()
        );
        let d = pull_one(&b).await.unwrap();
        b.dead_letter(&d.receipt, None).await.unwrap();
    }
    assert_eq!(b.redrive_dead_letters(GROUP, None).await.unwrap(), count);
    assert!(b.dead_letters(GROUP, 100).await.unwrap().is_empty());
    for i in 0..count {
        let d = pull_one(&b).await.expect("re-driven");
        assert_eq!(d.body[0], i as u8);
        b.ack(&d.receipt).await.unwrap();
    }
    b.close().await.unwrap();
}
