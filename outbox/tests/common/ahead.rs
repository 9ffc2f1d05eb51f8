//! Claiming ahead on the stores that lease rows (SQLite, MySQL): the cases, generic over the
//! store; `relay_sqlite.rs` and `relay_mysql.rs` run them. The Postgres ones are in
//! `relay_postgres.rs` (there the batch claimed ahead is an open transaction, here a lease).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use courier_outbox::{Message, Outbox};
use sqlx::Pool;

use super::{Behaviour, PATIENCE, Recorder, Running, TestStore, eventually, relay};

/// While a full batch is published the next one is leased; nothing leaves the outbox before the
/// broker acknowledged it; the application still commits meanwhile (on SQLite, the relay holds no
/// write lock while both batches wait); and a relay that dies holding both loses neither.
pub async fn claimed_ahead_is_leased_and_leaves_only_when_published<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let messages: Vec<Message> = (0..4)
        .map(|n| Message::new("t", format!("m{n}")).with_key(format!("k{n}")))
        .collect();
    Outbox::new().enqueue_batch(&pool, &messages).await.unwrap();
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::WaitForGate);
    let doomed = Running::start(
        relay(&pool, &recorder, "ahead")
            .batch_size(2)
            .lease(Duration::from_millis(300))
            .publish_timeout(Duration::from_secs(3600)),
    );
    recorder
        .wait_until("the first batch in flight", |r| r.total_calls() == 2)
        .await;
    eventually("the next batch leased ahead", async || {
        DB::rows(&pool).await.iter().all(|row| row.leased)
    })
    .await;
    assert_eq!(
        DB::pending(&pool).await,
        4,
        "no row left before its publish"
    );
    assert_eq!(
        recorder.total_calls(),
        2,
        "the batch claimed ahead waits its turn"
    );

    let meanwhile = Message::new("t", "committed while both batches are leased");
    let commit = async {
        let mut tx = DB::begin(&pool).await;
        Outbox::new().enqueue(&mut *tx, &meanwhile).await.unwrap();
        tx.commit().await.unwrap();
    };
    tokio::time::timeout(PATIENCE, commit)
        .await
        .expect("the application could not commit while a batch was leased ahead");
    doomed.abort().await;

    // The leases run out (no longer renewed); the heir publishes everything once.
    let heir_publisher = Recorder::default();
    let heir = Running::start(relay(&pool, &heir_publisher, "heir"));
    heir_publisher.wait_for_accepted(5).await;
    heir.stop().await;
    let mut published = heir_publisher.accepted_ids();
    published.sort();
    let mut expected: Vec<_> = messages.iter().map(|m| m.id).collect();
    expected.push(meanwhile.id);
    expected.sort();
    assert_eq!(published, expected, "every message exactly once");
    assert_eq!(DB::pending(&pool).await, 0);
}

/// A message of the batch in hand fails while the next batch is claimed ahead (`claimed_ahead`
/// says when it is): the batch claimed ahead goes back, the failed message backs off, and no later
/// message of its key overtakes it. On Postgres the batch claimed ahead holds the keys' later
/// messages (a2, b2); on the leasing stores it skips keys leased to the batch in hand and takes
/// c1 and d1.
pub async fn a_failure_gives_back_the_batch_claimed_ahead<DB: TestStore>(
    pool: Pool<DB>,
    claimed_ahead: impl AsyncFn() -> bool,
) where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let a1 = Message::new("t", "a1").with_key("a");
    let b1 = Message::new("t", "b1").with_key("b");
    let a2 = Message::new("t", "a2").with_key("a");
    let b2 = Message::new("t", "b2").with_key("b");
    let c1 = Message::new("t", "c1").with_key("c");
    let d1 = Message::new("t", "d1").with_key("d");
    let all = [a1.clone(), b1.clone(), a2.clone(), b2.clone(), c1, d1];
    Outbox::new().enqueue_batch(&pool, &all).await.unwrap();
    let recorder = Recorder::default();
    let failed_once = Arc::new(AtomicBool::new(false));
    let (first, slow) = (a1.id, b1.id);
    recorder.set_rule(move |message| {
        if message.id == first && !failed_once.swap(true, Ordering::SeqCst) {
            Behaviour::Fail
        } else if message.id == slow {
            Behaviour::WaitForGate
        } else {
            Behaviour::Accept
        }
    });
    let running = Running::start(
        relay(&pool, &recorder, "in-order")
            .batch_size(2)
            .publish_timeout(Duration::from_secs(3600)),
    );
    recorder
        .wait_until("the first batch in flight", |r| r.total_calls() == 2)
        .await;
    eventually("the next batch claimed ahead", claimed_ahead).await;
    recorder.open_gate();
    recorder.wait_for_accepted(all.len()).await;
    running.stop().await;
    let order = recorder.accepted_ids();
    let at = |id| order.iter().position(|x| *x == id).unwrap();
    assert!(at(a1.id) < at(a2.id), "a1 before a2: {order:?}");
    assert!(at(b1.id) < at(b2.id), "b1 before b2: {order:?}");
    assert_eq!(
        recorder.calls(a1.id),
        2,
        "a1 failed once, then went through"
    );
    assert_eq!(DB::pending(&pool).await, 0);
}

/// Whether the batch in hand and the one claimed ahead are both leased (2 + 2 of the rows).
pub async fn two_batches_leased<DB: TestStore>(pool: &Pool<DB>) -> bool {
    DB::rows(pool).await.iter().filter(|row| row.leased).count() == 4
}
