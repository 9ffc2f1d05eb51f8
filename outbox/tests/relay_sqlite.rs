//! What the relay does on SQLite only: leases that outlive a dead relay, a write lock held only
//! for the claim, wake-ups from the writer of the same process. Postgres needs none of these (row
//! locks die with the connection, NOTIFY wakes relays); see `relay_postgres.rs`.

mod common;

use std::time::Duration;

use common::{
    Behaviour, PATIENCE, Recorder, Running, TestStore, eventually, relay, wake_only_relay,
};
use courier_outbox::{Message, Outbox, Permanent, Relay, RelayState};
use sqlx::{Sqlite, SqlitePool};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tower::BoxError;

async fn enqueue(pool: &SqlitePool, messages: &[Message]) {
    Outbox::new().enqueue_batch(pool, messages).await.unwrap();
}

#[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
async fn idle_relay_takes_over_the_rows_of_a_dead_relay_once_its_lease_runs_out(pool: SqlitePool) {
    let messages: Vec<Message> = (0..50)
        .map(|i| Message::new("t", format!("{i}")).with_key(format!("k{}", i % 5)))
        .collect();
    enqueue(&pool, &messages).await;

    let doomed_publisher = Recorder::default();
    doomed_publisher.set_rule(|_| Behaviour::Hang);
    let doomed =
        Running::start(relay(&pool, &doomed_publisher, "doomed").lease(Duration::from_millis(300)));
    doomed_publisher
        .wait_until("a publish in flight", |r| r.total_calls() > 0)
        .await;
    // The claim is committed: every row is leased to the doomed relay.
    let rows = Sqlite::rows(&pool).await;
    assert!(rows.iter().all(|row| row.leased), "{rows:?}");

    // The heir finds nothing it may take; it polls never and is woken by nothing but the end of
    // the lease (renewed while the doomed relay lives).
    let heir_publisher = Recorder::default();
    let mut heir = Running::start(wake_only_relay(&pool, &heir_publisher, "heir"));
    heir.wait_for_state(RelayState::Idle).await;
    doomed.abort().await;

    heir_publisher.wait_for_accepted(messages.len()).await;
    heir.stop().await;
    let mut expected: Vec<_> = messages.iter().map(|m| m.id).collect();
    let mut published = heir_publisher.accepted_ids();
    published.sort();
    expected.sort();
    assert_eq!(published, expected, "every message exactly once");
    assert_eq!(Sqlite::pending(&pool).await, 0);
}

#[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
async fn relay_does_not_hold_the_write_lock_while_publishing(pool: SqlitePool) {
    let stuck = Message::new("t", "stuck at the broker");
    enqueue(&pool, std::slice::from_ref(&stuck)).await;
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::Hang);
    let running = Running::start(
        relay(&pool, &recorder, "publisher-bound").shutdown_grace(Duration::from_millis(10)),
    );
    recorder
        .wait_until("a publish in flight", |r| r.total_calls() > 0)
        .await;

    // SQLite has one writer: were the relay still in its claim transaction, this one would wait
    // for the lock (and fail with "database is locked" after the pool's busy timeout).
    let meanwhile = Message::new("t", "committed while the broker hangs");
    let commit = async {
        let mut tx = Sqlite::begin(&pool).await;
        Outbox::new().enqueue(&mut *tx, &meanwhile).await.unwrap();
        tx.commit().await.unwrap();
    };
    tokio::time::timeout(PATIENCE, commit)
        .await
        .expect("the application could not commit while the relay was publishing");

    let rows = Sqlite::rows(&pool).await;
    let leased: Vec<_> = rows.iter().map(|row| (row.id, row.leased)).collect();
    assert_eq!(leased, vec![(stuck.id, true), (meanwhile.id, false)]);
    running.stop().await;
    assert!(Sqlite::rows(&pool).await.iter().all(|row| !row.leased));
}

#[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
async fn enqueue_wakes_an_idle_relay_of_the_same_process(pool: SqlitePool) {
    let recorder = Recorder::default();
    // Only the writer's in-process signal can explain a publish.
    let mut running = Running::start(wake_only_relay(&pool, &recorder, "sleeper"));
    running.wait_for_state(RelayState::Idle).await;
    let message = Message::new("t", "wake up");
    Outbox::new().enqueue(&pool, &message).await.unwrap();
    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![message.id]);
}

#[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
async fn wake_up_before_the_commit_still_publishes_the_message(pool: SqlitePool) {
    let recorder = Recorder::default();
    let mut running = Running::start(wake_only_relay(&pool, &recorder, "early-bird"));
    running.wait_for_state(RelayState::Idle).await;

    // The signal fires at insert time, while the transaction still holds the write lock.
    let mut tx = Sqlite::begin(&pool).await;
    let message = Message::new("t", "committed after the wake-up");
    Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
    eventually("the woken relay to wait for the write lock", async || {
        pool.size() as usize - pool.num_idle() >= 2
    })
    .await;
    tx.commit().await.unwrap();

    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![message.id]);
    assert_eq!(Sqlite::pending(&pool).await, 0);
}

#[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
async fn lease_is_renewed_while_a_slow_publish_runs(pool: SqlitePool) {
    let message = Message::new("t", "slow broker");
    enqueue(&pool, std::slice::from_ref(&message)).await;
    let lease = Duration::from_millis(600);
    let slow_publisher = Recorder::default();
    slow_publisher.set_rule(|_| Behaviour::WaitForGate);
    let slow = Running::start(relay(&pool, &slow_publisher, "slow").lease(lease));
    slow_publisher
        .wait_until("a publish in flight", |r| r.total_calls() > 0)
        .await;
    let first_expiry = Sqlite::row(&pool, message.id)
        .await
        .leased_until
        .expect("the claimed row is leased");

    // A second relay polls all along (every 50 ms, its rebalance interval) for rows to take.
    let rival_publisher = Recorder::default();
    let rival = Running::start(relay(&pool, &rival_publisher, "rival"));
    let long_after_the_first_lease = first_expiry + lease;
    eventually("the first lease to be long over", async || {
        chrono::Utc::now() > long_after_the_first_lease
    })
    .await;
    assert_eq!(
        rival_publisher.total_calls(),
        0,
        "the rival took a row whose lease should have been renewed"
    );
    let row = Sqlite::row(&pool, message.id).await;
    assert!(
        row.leased_until.is_some_and(|until| until > first_expiry),
        "the lease was not renewed: {row:?}"
    );

    slow_publisher.open_gate();
    slow_publisher.wait_for_accepted(1).await;
    slow.stop().await;
    rival.stop().await;
    assert_eq!(
        rival_publisher.total_calls(),
        0,
        "the rival took a row in hand"
    );
    assert_eq!(Sqlite::pending(&pool).await, 0);
}

#[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
async fn an_outcome_brought_back_after_the_lease_ran_out_leaves_the_new_owners_rows_alone(
    pool: SqlitePool,
) {
    let refused = Message::new("t", "refused for good, too late");
    let unavailable = Message::new("t", "refused for now, too late");
    enqueue(&pool, &[refused.clone(), unavailable.clone()]).await;

    // The stale relay's broker takes both messages and answers, with an error for each, only
    // when the test says so.
    let (answer, answered) = watch::channel(false);
    let (called, mut calls) = mpsc::unbounded_channel();
    let permanent = refused.id;
    let stale_broker = tower::service_fn(move |message: Message| {
        let mut answered = answered.clone();
        let called = called.clone();
        async move {
            called.send(message.id).unwrap();
            answered.wait_for(|answer| *answer).await.unwrap();
            let error: BoxError = if message.id == permanent {
                Permanent::new("refused").into()
            } else {
                "unavailable".into()
            };
            Err::<(), _>(error)
        }
    });
    // An hour's lease: it is renewed every 20 minutes, so never during the test.
    let stale = Relay::builder(pool.clone(), stale_broker)
        .name("stale")
        .lease(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut stale_state = stale.state();
    let stop_stale = CancellationToken::new();
    let stale = tokio::spawn(stale.run(stop_stale.clone()));
    for _ in 0..2 {
        tokio::time::timeout(PATIENCE, calls.recv())
            .await
            .expect("the stale relay publishes both messages");
    }

    // Its lease runs out, as if the relay had stalled past it; another relay takes the rows.
    sqlx::query("UPDATE outbox_messages SET leased_until = 0")
        .execute(&pool)
        .await
        .unwrap();
    let heir_publisher = Recorder::default();
    heir_publisher.set_rule(|_| Behaviour::WaitForGate);
    let heir = Running::start(relay(&pool, &heir_publisher, "heir"));
    heir_publisher
        .wait_until("the heir publishing both", |r| r.total_calls() == 2)
        .await;

    // The stale relay's broker answers at last; the relay records its outcomes and goes idle.
    answer.send_replace(true);
    tokio::time::timeout(
        PATIENCE,
        stale_state.wait_for(|state| *state == RelayState::Idle),
    )
    .await
    .expect("the stale relay records its batch")
    .unwrap();
    assert_eq!(
        Sqlite::failure_count(&pool).await,
        0,
        "a message the heir is delivering was moved to the failure table"
    );
    let rows = Sqlite::rows(&pool).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|row| row.leased && row.attempts == 0),
        "the stale outcome touched the heir's rows: {rows:?}"
    );

    heir_publisher.open_gate();
    heir_publisher.wait_for_accepted(2).await;
    heir.stop().await;
    stop_stale.cancel();
    stale.await.unwrap().unwrap();
    assert_eq!(Sqlite::pending(&pool).await, 0);
    assert_eq!(Sqlite::failure_count(&pool).await, 0);
}

#[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
async fn claimed_ahead_is_leased_and_leaves_only_when_published(pool: SqlitePool) {
    common::ahead::claimed_ahead_is_leased_and_leaves_only_when_published(pool).await;
}

#[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
async fn a_failure_gives_back_the_batch_claimed_ahead(pool: SqlitePool) {
    let leased = async || common::ahead::two_batches_leased(&pool).await;
    common::ahead::a_failure_gives_back_the_batch_claimed_ahead(pool.clone(), leased).await;
}
