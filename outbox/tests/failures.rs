//! The failure table: what exhausts its attempts lands there, and comes back when replayed.

mod common;

use common::{Behaviour, Recorder, Running, eventually, pending, relay};
use courier_outbox::{FailureFilter, Failures, Message, Outbox, RelayState};
use sqlx::PgPool;

courier_test_support::postgres_for_tests!();

async fn failure_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox.failures")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn last_attempt_moves_the_message_to_the_failure_table_and_replay_publishes_it(pool: PgPool) {
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
    assert_eq!(pending(&pool).await, 0);

    recorder.set_rule(|_| Behaviour::Accept);
    let replayed = Failures::new().replay_one(&pool, doomed.id).await.unwrap();
    assert!(replayed);
    recorder.wait_for_accepted(2).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![follower.id, doomed.id]);
    assert_eq!(failure_count(&pool).await, 0);
    assert_eq!(pending(&pool).await, 0);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn permanent_error_skips_the_retries(pool: PgPool) {
    let message = Message::new("t", "malformed");
    Outbox::new().enqueue(&pool, &message).await.unwrap();
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::FailPermanently);
    let running = Running::start(relay(&pool, &recorder, "strict").max_attempts(50));
    eventually(
        &pool,
        "a failure row",
        "SELECT count(*) = 1 FROM outbox.failures",
    )
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

/// Fills the failure table directly with `n` failures of each topic.
async fn seed_failures(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO outbox.failures
             (id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error, failed_at)
         SELECT gen_random_uuid(), g, t.topic, 'key-' || (g % 3), NULL, '{}', '\\x00', now(), 16,
                t.error || ' #' || g, now() - g * interval '1 hour'
         FROM generate_series(1, $1) AS g,
              (VALUES ('orders', 'Connection refused'), ('payments', 'send timed out')) AS t(topic, error)",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn list_filters_by_topic_key_time_and_error_text(pool: PgPool) {
    seed_failures(&pool, 6).await;
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

    let oldest_first = failures
        .list(&pool, &FailureFilter::all().topic("payments"))
        .await
        .unwrap();
    assert!(
        oldest_first
            .windows(2)
            .all(|w| w[0].failed_at <= w[1].failed_at)
    );
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn replay_by_filter_and_purge(pool: PgPool) {
    seed_failures(&pool, 4).await;
    let failures = Failures::new();
    let replayed = failures
        .replay(&pool, &FailureFilter::all().topic("payments"))
        .await
        .unwrap();
    assert_eq!(replayed, 4);
    let replayed_rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT attempts, topic FROM outbox.messages ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(replayed_rows, vec![(0, "payments".to_owned()); 4]);

    let purged = failures
        .purge(&pool, &FailureFilter::all().error_contains("#1"))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let purged = failures.purge(&pool, &FailureFilter::all()).await.unwrap();
    assert_eq!(purged, 3);
    assert_eq!(failure_count(&pool).await, 0);
}
