//! The failure table on every store: what exhausts its attempts lands there, and comes back when
//! replayed.

mod common;

use common::{
    Behaviour, Recorder, Running, TestStore, eventually, every_store, relay, wake_only_relay,
};
use courier_outbox::{Error, FailureFilter, Failures, Message, Outbox, RelayState};
use sqlx::{Acquire, Executor, Pool};

courier_test_support::postgres_for_tests!();

every_store!(
    last_attempt_moves_the_message_to_the_failure_table_and_replay_publishes_it,
    permanent_error_skips_the_retries,
    list_filters_by_topic_key_time_and_error_text,
    replay_by_filter_and_purge,
    replay_inside_a_transaction_is_undone_by_its_rollback,
    replay_wakes_an_idle_relay,
    replay_keeps_and_reports_failures_whose_id_is_already_in_the_outbox,
);
every_store!(unmigrated: failure_table_missing_says_to_run_the_migrations);

async fn last_attempt_moves_the_message_to_the_failure_table_and_replay_publishes_it<
    DB: TestStore,
>(
    pool: Pool<DB>,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let doomed = Message::new("payments", "p-1")
        .with_key("order-1")
        .with_header("h", "v");
    let follower = Message::new("payments", "p-2").with_key("order-1");
    Outbox::new()
        .enqueue_batch(&pool, &[doomed.clone(), follower.clone()])
        .await
        .unwrap();

    let recorder = Recorder::default();
    let broken = doomed.id;
    recorder.set_rule(move |m| {
        if m.id == broken {
            Behaviour::Fail
        } else {
            Behaviour::Accept
        }
    });
    let mut running = Running::start(relay(&pool, &recorder, "giver-upper").max_attempts(3));
    // Once the head is out of the way, its follower may go.
    recorder.wait_for_accepted(1).await;
    running.wait_for_state(RelayState::Idle).await;

    assert_eq!(recorder.accepted_ids(), vec![follower.id]);
    assert_eq!(recorder.calls(doomed.id), 3);
    let failed = Failures::new()
        .list(&pool, &FailureFilter::all())
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    let failed = &failed[0];
    assert_eq!(failed.message.id, doomed.id);
    assert_eq!(failed.message.attempts, 3);
    assert_eq!(failed.message.headers["h"], "v");
    assert_eq!(failed.message.key.as_deref(), Some("order-1"));
    assert!(
        failed.last_error.contains("injected failure"),
        "{}",
        failed.last_error
    );
    assert_eq!(DB::pending(&pool).await, 0);

    recorder.set_rule(|_| Behaviour::Accept);
    let replayed = Failures::new().replay_one(&pool, doomed.id).await.unwrap();
    assert!(replayed);
    recorder.wait_for_accepted(2).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![follower.id, doomed.id]);
    assert_eq!(DB::failure_count(&pool).await, 0);
    assert_eq!(DB::pending(&pool).await, 0);
}

async fn permanent_error_skips_the_retries<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let message = Message::new("t", "malformed");
    Outbox::new().enqueue(&pool, &message).await.unwrap();
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::FailPermanently);
    let running = Running::start(relay(&pool, &recorder, "strict").max_attempts(50));
    eventually("a failure row", async || {
        DB::failure_count(&pool).await == 1
    })
    .await;
    running.stop().await;
    assert_eq!(recorder.calls(message.id), 1);
    let failed = Failures::new()
        .list(&pool, &FailureFilter::all())
        .await
        .unwrap();
    assert!(
        failed[0]
            .last_error
            .starts_with("permanent failure: injected"),
        "{}",
        failed[0].last_error
    );
}

async fn list_filters_by_topic_key_time_and_error_text<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    DB::seed_failures(&pool, 6).await;
    let failures = Failures::new();
    let count = |filter: FailureFilter| {
        let pool = pool.clone();
        async move { failures.list(&pool, &filter).await.unwrap().len() }
    };
    assert_eq!(count(FailureFilter::all()).await, 12);
    assert_eq!(count(FailureFilter::all().topic("orders")).await, 6);
    assert_eq!(
        count(FailureFilter::all().topic("orders").key("key-0")).await,
        2
    );
    assert_eq!(
        count(FailureFilter::all().error_contains("CONNECTION refused")).await,
        6
    );
    let three_and_a_half_hours_ago = chrono::Utc::now() - chrono::Duration::minutes(210);
    assert_eq!(
        count(FailureFilter::all().failed_after(three_and_a_half_hours_ago)).await,
        6
    );
    assert_eq!(
        count(FailureFilter::all().failed_before(three_and_a_half_hours_ago)).await,
        6
    );
    assert_eq!(count(FailureFilter::all().limit(5)).await, 5);
    assert_eq!(count(FailureFilter::all().ids([])).await, 0);

    let oldest_first = failures
        .list(&pool, &FailureFilter::all().topic("payments"))
        .await
        .unwrap();
    assert!(
        oldest_first
            .windows(2)
            .all(|w| w[0].failed_at <= w[1].failed_at)
    );
    // The limit keeps the oldest.
    let oldest_two = failures
        .list(&pool, &FailureFilter::all().topic("payments").limit(2))
        .await
        .unwrap();
    assert_eq!(oldest_two, oldest_first[..2]);
    let by_id = failures
        .list(
            &pool,
            &FailureFilter::all().ids([oldest_first[3].message.id]),
        )
        .await
        .unwrap();
    assert_eq!(by_id, oldest_first[3..4]);
}

async fn replay_by_filter_and_purge<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    DB::seed_failures(&pool, 4).await;
    let failures = Failures::new();
    let oldest_first = failures
        .list(&pool, &FailureFilter::all().topic("payments"))
        .await
        .unwrap();
    let replayed = failures
        .replay(&pool, &FailureFilter::all().topic("payments"))
        .await
        .unwrap();
    assert_eq!(replayed.replayed, 4);
    assert!(replayed.conflicts.is_empty(), "{replayed:?}");
    let rows = DB::rows(&pool).await;
    let replayed_rows: Vec<(i64, &str)> = rows
        .iter()
        .map(|row| (row.attempts, row.topic.as_str()))
        .collect();
    assert_eq!(replayed_rows, vec![(0, "payments"); 4]);
    assert!(
        rows.iter()
            .all(|row| row.available_at <= chrono::Utc::now())
    );
    let mut replayed_ids: Vec<_> = rows.iter().map(|row| row.id).collect();
    let mut listed_ids: Vec<_> = oldest_first.iter().map(|f| f.message.id).collect();
    replayed_ids.sort();
    listed_ids.sort();
    assert_eq!(replayed_ids, listed_ids, "replay keeps the message ids");

    let purged = failures
        .purge(&pool, &FailureFilter::all().error_contains("#1"))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let purged = failures.purge(&pool, &FailureFilter::all()).await.unwrap();
    assert_eq!(purged, 3);
    assert_eq!(DB::failure_count(&pool).await, 0);
}

async fn replay_inside_a_transaction_is_undone_by_its_rollback<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB> + Acquire<'c, Database = DB>,
{
    DB::seed_failures(&pool, 2).await;
    let failures = Failures::new();
    let mut tx = DB::begin(&pool).await;
    let replayed = failures
        .replay(&mut *tx, &FailureFilter::all().topic("orders"))
        .await
        .unwrap();
    assert_eq!(replayed.replayed, 2);
    let listed = failures
        .list(&mut *tx, &FailureFilter::all())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "the transaction sees its own replay");
    tx.rollback().await.unwrap();
    assert_eq!(DB::failure_count(&pool).await, 4);
    assert_eq!(DB::pending(&pool).await, 0);
}

async fn replay_wakes_an_idle_relay<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    DB::seed_failures(&pool, 1).await;
    let recorder = Recorder::default();
    // Only a wake-up (NOTIFY on Postgres, the in-process signal on SQLite) can explain a publish.
    let mut running = Running::start(wake_only_relay(&pool, &recorder, "replayer"));
    running.wait_for_state(RelayState::Idle).await;
    let replayed = Failures::new()
        .replay(&pool, &FailureFilter::all().topic("orders"))
        .await
        .unwrap();
    assert_eq!(replayed.replayed, 1);
    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted()[0].topic, "orders");
}

async fn replay_keeps_and_reports_failures_whose_id_is_already_in_the_outbox<DB: TestStore>(
    pool: Pool<DB>,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    DB::seed_failures(&pool, 3).await;
    let failures = Failures::new();
    let orders = failures
        .list(&pool, &FailureFilter::all().topic("orders"))
        .await
        .unwrap();
    // The application enqueues two of the failed messages again, with their ids: the outbox now
    // holds messages the failure table also holds.
    let again = [orders[0].message.clone(), orders[2].message.clone()];
    Outbox::new().enqueue_batch(&pool, &again).await.unwrap();

    let report = failures
        .replay(&pool, &FailureFilter::all().topic("orders"))
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    assert_eq!(
        report.conflicts,
        vec![orders[0].message.id, orders[2].message.id],
        "the conflicts, oldest failure first"
    );
    let kept: Vec<_> = failures
        .list(&pool, &FailureFilter::all().topic("orders"))
        .await
        .unwrap()
        .into_iter()
        .map(|failed| failed.message.id)
        .collect();
    assert_eq!(kept, report.conflicts, "the conflicting failures stay");
    let mut pending: Vec<_> = DB::rows(&pool).await.iter().map(|row| row.id).collect();
    let mut expected: Vec<_> = orders.iter().map(|failed| failed.message.id).collect();
    pending.sort();
    expected.sort();
    assert_eq!(pending, expected, "one outbox row per id, none lost");

    let error = failures
        .replay_one(&pool, orders[0].message.id)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::ReplayConflict { id } if id == orders[0].message.id),
        "{error}"
    );
    assert!(
        error.to_string().contains("already in the outbox"),
        "{error}"
    );
    assert_eq!(DB::failure_count(&pool).await, 3 + 2);
}

async fn failure_table_missing_says_to_run_the_migrations<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let failures = Failures::new();
    let errors = [
        failures
            .list(&pool, &FailureFilter::all())
            .await
            .unwrap_err(),
        failures
            .replay(&pool, &FailureFilter::all())
            .await
            .unwrap_err(),
        failures
            .purge(&pool, &FailureFilter::all())
            .await
            .unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error, Error::NotMigrated), "{error}");
    }
}
