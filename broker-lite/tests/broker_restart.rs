//! Restarts: topics, committed offsets and pending redeliveries survive; un-acked messages are
//! delivered again (at least once).

mod broker_common;

use std::time::Duration;

use broker_common::{bodies, config, open_at};
use broker_lite::broker::{
    ConsumerSpec, ManualClock, NackOutcome, PullRequest, SendRequest, SendStatus,
};

#[tokio::test]
async fn restart_resumes_from_committed_offsets_and_redelivers_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let b = open_at(dir.path(), config(&clock)).await;
    b.create_topic("t", 1).await.unwrap();
    for i in 0..6 {
        let r = b
            .send(SendRequest::new("t", format!("m{i}")))
            .await
            .unwrap();
        assert!(r.status.is_ok());
    }
    b.subscribe(ConsumerSpec::new("g", "c", "t")).await.unwrap();
    let d = b
        .pull(PullRequest::new("g", "c", "t").with_max_messages(4))
        .await
        .unwrap();
    assert_eq!(bodies(&d), ["m0", "m1", "m2", "m3"]);
    b.ack(&d[0].receipt).await.unwrap();
    b.ack(&d[2].receipt).await.unwrap(); // out of order
    let outcome = b.nack(&d[3].receipt, None).await.unwrap();
    assert_eq!(
        outcome,
        NackOutcome::Redeliver {
            after: Duration::from_secs(10)
        }
    );
    // m1 stays in flight across the restart.
    b.close().await.unwrap();

    let b = open_at(dir.path(), config(&clock)).await;
    assert_eq!(b.topics()[0].queues, 1, "topics survive");
    let lag = b.lag("g").unwrap();
    assert_eq!(lag[0].committed, 1, "the lowest un-acked offset");
    b.subscribe(ConsumerSpec::new("g", "c", "t")).await.unwrap();
    let d = b
        .pull(PullRequest::new("g", "c", "t").with_max_messages(10))
        .await
        .unwrap();
    // m1 (in flight at close) again, then the new ones; m3 waits for its delay, m2 was acked.
    assert_eq!(bodies(&d), ["m1", "m4", "m5"]);
    for d in &d {
        b.ack(&d.receipt).await.unwrap();
    }
    clock.advance(Duration::from_secs(10));
    let d = b.pull(PullRequest::new("g", "c", "t")).await.unwrap();
    assert_eq!(bodies(&d), ["m3"]);
    assert_eq!(d[0].reconsume_times, 1, "the reconsume count survives");
    b.ack(&d[0].receipt).await.unwrap();
    b.save_offsets().await.unwrap();
    b.close().await.unwrap();

    let b = open_at(dir.path(), config(&clock)).await;
    assert_eq!(b.lag("g").unwrap()[0].lag, 0);
    b.subscribe(ConsumerSpec::new("g", "c", "t")).await.unwrap();
    assert!(
        b.pull(PullRequest::new("g", "c", "t"))
            .await
            .unwrap()
            .is_empty()
    );
    let r = b.send(SendRequest::new("t", "m6")).await.unwrap();
    assert_eq!(r.queue_offset, 6);
    b.close().await.unwrap();
}

#[tokio::test]
async fn lookup_index_is_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let b = open_at(dir.path(), config(&clock)).await;
    let r = b
        .send(SendRequest::new("t", "hello").with_key("order-1"))
        .await
        .unwrap();
    let r2 = b
        .send(SendRequest::new("t", "again").with_key("order-1"))
        .await
        .unwrap();
    b.close().await.unwrap();
    let b = open_at(dir.path(), config(&clock)).await;
    let m = b.lookup(r.message_id).await.unwrap().unwrap();
    assert_eq!(&m.body[..], b"hello");
    assert_eq!(m.queue_offset, r.queue_offset);
    let by_key = b.lookup_by_key("t", "order-1", 10).await.unwrap();
    assert_eq!(by_key.len(), 2);
    assert_eq!(by_key[0].message_id, r2.message_id, "newest first");
    assert!(b.lookup(uuid::Uuid::now_v7()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_crash_loses_no_message_unacked_ones_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let b = open_at(dir.path(), config(&clock)).await;
    b.create_topic("t", 1).await.unwrap();
    for i in 0..4 {
        let r = b
            .send(SendRequest::new("t", format!("m{i}")))
            .await
            .unwrap();
        assert!(r.status.is_ok());
    }
    b.subscribe(ConsumerSpec::new("g", "c", "t")).await.unwrap();
    let d = b
        .pull(PullRequest::new("g", "c", "t").with_max_messages(2))
        .await
        .unwrap();
    b.ack(&d[0].receipt).await.unwrap();
    b.save_offsets().await.unwrap();
    // Acked after the last save: may come back after the crash (at least once).
    b.ack(&d[1].receipt).await.unwrap();
    drop(b); // no close: like a crash of the broker process

    let b = open_at(dir.path(), config(&clock)).await;
    b.subscribe(ConsumerSpec::new("g", "c", "t")).await.unwrap();
    let d = b
        .pull(PullRequest::new("g", "c", "t").with_max_messages(10))
        .await
        .unwrap();
    assert_eq!(bodies(&d), ["m1", "m2", "m3"]);
    b.close().await.unwrap();
}

#[tokio::test]
async fn background_task_saves_offsets_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let mut c = config(&clock);
    c.background_tasks = true;
    c.offsets_save_interval = Duration::from_secs(1);
    let b = open_at(dir.path(), c).await;
    b.create_topic("t", 1).await.unwrap();
    let r = b.send(SendRequest::new("t", "m0")).await.unwrap();
    assert!(r.status.is_ok());
    b.subscribe(ConsumerSpec::new("g", "c", "t")).await.unwrap();
    let d = b.pull(PullRequest::new("g", "c", "t")).await.unwrap();
    b.ack(&d[0].receipt).await.unwrap();
    // From here on tokio time is paused: the save task's tick comes when the test is idle, and
    // time does not auto-advance while the save runs on the blocking pool.
    tokio::time::pause();
    // Half a tick past the third save: every task is idle again when the sleep ends.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    drop(b);
    tokio::time::resume();

    let b = open_at(dir.path(), config(&clock)).await;
    assert_eq!(
        b.lag("g").unwrap()[0].committed,
        1,
        "saved by the background task"
    );
    b.close().await.unwrap();
}

/// A retried send (same message id) is stored once, also after a reopen (issue 13: retries of
/// FLUSH_SLAVE_TIMEOUT / SLAVE_NOT_AVAILABLE and relay restarts must not store duplicates).
#[tokio::test]
async fn a_resent_message_id_is_stored_once_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let b = open_at(dir.path(), config(&clock)).await;
    let id = uuid::Uuid::now_v7();
    let first = b
        .send(SendRequest::new("t", "once").with_message_id(id))
        .await
        .unwrap();
    let again = b
        .send_batch(vec![
            SendRequest::new("t", "other"),
            SendRequest::new("t", "once").with_message_id(id),
        ])
        .await
        .unwrap();
    assert_eq!(again[1].status, SendStatus::SendOk);
    assert_eq!(
        (again[1].queue_id, again[1].queue_offset),
        (first.queue_id, first.queue_offset)
    );
    b.close().await.unwrap();
    let b = open_at(dir.path(), config(&clock)).await;
    let after = b
        .send(SendRequest::new("t", "once").with_message_id(id))
        .await
        .unwrap();
    assert_eq!(
        (after.queue_id, after.queue_offset),
        (first.queue_id, first.queue_offset)
    );
    // The same id on another topic is another message.
    let other = b
        .send(SendRequest::new("u", "once").with_message_id(id))
        .await
        .unwrap();
    assert_eq!(other.queue_offset, 0);
    let stored: u64 = b
        .store()
        .queues()
        .into_iter()
        .filter_map(|(t, q)| b.store().queue_bounds(&t, q))
        .map(|bounds| bounds.max - bounds.min)
        .sum();
    assert_eq!(stored, 3, "t: once and other; u: once");
    b.close().await.unwrap();
}
