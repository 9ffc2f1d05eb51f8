//! The broker never answers SendOk for a message the store could not make durable (P1, B1).

mod broker_common;

use std::sync::Arc;
use std::time::Duration;

use broker_common::config;
use broker_lite::broker::{Broker, BrokerError, ManualClock, SendRequest, SendStatus};
use broker_lite::storage::backend::FaultyBackend;

#[tokio::test]
async fn a_failed_fsync_is_an_error_never_send_ok() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let b = Broker::open_with_backend(Arc::new(backend.clone()), config(&clock))
        .await
        .unwrap();
    b.create_topic("t", 1).await.unwrap();
    let ok = b.send(SendRequest::new("t", "before")).await.unwrap();
    assert_eq!(ok.status, SendStatus::SendOk);
    backend.fail_sync(true);
    let err = b.send(SendRequest::new("t", "during")).await.unwrap_err();
    assert!(matches!(err, BrokerError::Storage(_)), "{err}");
    backend.fail_sync(false);
    // The store stays failed: no later SendOk either.
    assert!(b.send(SendRequest::new("t", "after")).await.is_err());
}

#[tokio::test]
async fn a_stalled_fsync_answers_flush_disk_timeout() {
    let backend = FaultyBackend::new();
    let clock = ManualClock::starting_now();
    let mut c = config(&clock);
    c.store.sync_flush_timeout = Duration::from_millis(100);
    let b = Broker::open_with_backend(Arc::new(backend.clone()), c)
        .await
        .unwrap();
    b.create_topic("t", 1).await.unwrap();
    backend.hold_sync(true);
    let r = b.send(SendRequest::new("t", "slow disk")).await.unwrap();
    assert_eq!(r.status, SendStatus::FlushDiskTimeout);
    assert!(!r.status.is_ok());
    backend.hold_sync(false);
    b.close().await.unwrap();
}
