//! What the relay does on Postgres only: concurrent writers committing out of sequence order,
//! NOTIFY wake-ups and the idle-relay marks behind them, reconnecting after a killed connection.
//! SQLite has one writer, no NOTIFY and no relay connection of its own; see `relay_sqlite.rs`.

mod common;

use common::{Recorder, Running, TestStore, relay, wake_only_relay};
use courier_outbox::{Message, Outbox, RelayState};
use sqlx::{PgPool, Postgres};

courier_test_support::postgres_for_tests!();

async fn enqueue(pool: &PgPool, messages: &[Message]) {
    Outbox::new().enqueue_batch(pool, messages).await.unwrap();
}

async fn pending(pool: &PgPool) -> usize {
    Postgres::pending(pool).await
}

/// Polls the database until `query` returns true.
async fn eventually(pool: &PgPool, what: &str, query: &str) {
    common::eventually(what, async || {
        sqlx::query_scalar(query).fetch_one(pool).await.unwrap()
    })
    .await;
}

// Only Postgres lets a transaction that took a lower sequence number commit after a later one:
// on SQLite the open transaction holds the single write lock, so no later insert can commit.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn late_commit_with_lower_sequence_is_published(pool: PgPool) {
    // The slow transaction takes its sequence number first but commits last.
    let mut slow = pool.begin().await.unwrap();
    let late = Message::new("orders", "late");
    Outbox::new().enqueue(&mut *slow, &late).await.unwrap();
    let early = Message::new("orders", "early");
    enqueue(&pool, std::slice::from_ref(&early)).await;

    let recorder = Recorder::default();
    let mut running = Running::start(relay(&pool, &recorder, "late-commit"));
    recorder.wait_for_accepted(1).await;
    running.wait_for_state(RelayState::Idle).await;
    slow.commit().await.unwrap();
    recorder.wait_for_accepted(2).await;
    running.stop().await;

    assert_eq!(recorder.accepted_ids(), vec![early.id, late.id]);
    assert_eq!(pending(&pool).await, 0);
}

// NOTIFY, the idle-relay marks, the listener and the relay's own connection exist on Postgres only.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn notify_wakes_an_idle_relay_long_before_its_poll(pool: PgPool) {
    let recorder = Recorder::default();
    // Only the NOTIFY sent on commit can explain a publish.
    let mut running = Running::start(wake_only_relay(&pool, &recorder, "sleeper"));
    running.wait_for_state(RelayState::Idle).await;
    let message = Message::new("t", "wake up");
    let mut tx = pool.begin().await.unwrap();
    Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
    tx.commit().await.unwrap();
    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![message.id]);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn inserts_notify_only_while_a_relay_is_idle(pool: PgPool) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("outbox_messages").await.unwrap();
    // No relay waits: the insert must not take NOTIFY's commit lock.
    enqueue(&pool, &[Message::new("t", "busy")]).await;
    sqlx::query("NOTIFY outbox_messages, 'marker'")
        .execute(&pool)
        .await
        .unwrap();
    // A relay registers as idle: now the insert notifies.
    sqlx::query("INSERT INTO outbox.idle_relays (pid) VALUES (pg_backend_pid())")
        .execute(&pool)
        .await
        .unwrap();
    enqueue(&pool, &[Message::new("t", "quiet")]).await;

    // Notifications arrive in commit order.
    let first = listener.recv().await.unwrap();
    assert_eq!(
        first.payload(),
        "marker",
        "the insert notified with no relay idle"
    );
    let second = listener.recv().await.unwrap();
    assert_eq!(second.payload(), "");
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn relay_registers_as_idle_only_while_quiet(pool: PgPool) {
    let marks = "SELECT count(*) FROM outbox.idle_relays";
    let recorder = Recorder::default();
    let mut running = Running::start(relay(&pool, &recorder, "marker"));
    running.wait_for_state(RelayState::Idle).await;
    let count: i64 = sqlx::query_scalar(marks).fetch_one(&pool).await.unwrap();
    assert_eq!(count, 1, "a quiet relay asks for NOTIFY");
    running.stop().await;
    let count: i64 = sqlx::query_scalar(marks).fetch_one(&pool).await.unwrap();
    assert_eq!(count, 0, "a stopped relay withdraws its mark");
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn listener_comes_back_after_its_connection_is_killed(pool: PgPool) {
    let recorder = Recorder::default();
    let mut running = Running::start(wake_only_relay(&pool, &recorder, "phoenix"));
    running.wait_for_state(RelayState::Idle).await;
    let listener_pid = "SELECT pid FROM pg_stat_activity
                        WHERE application_name = 'phoenix-listener' AND datname = current_database()";
    eventually(
        &pool,
        "the listener to connect",
        &format!("SELECT EXISTS ({listener_pid})"),
    )
    .await;
    let old: i32 = sqlx::query_scalar(listener_pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    eventually(
        &pool,
        "a new listener connection",
        &format!(
            "SELECT EXISTS ({listener_pid} AND pid <> {old} AND state = 'idle'
                  AND query LIKE 'LISTEN%')"
        ),
    )
    .await;
    running.wait_for_state(RelayState::Idle).await;

    let message = Message::new("t", "after the reconnect");
    enqueue(&pool, std::slice::from_ref(&message)).await;
    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![message.id]);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn relay_reconnects_after_its_claim_connection_is_killed(pool: PgPool) {
    let recorder = Recorder::default();
    let mut running = Running::start(relay(&pool, &recorder, "lazarus"));
    running.wait_for_state(RelayState::Idle).await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'lazarus' AND datname = current_database()",
    )
    .execute(&pool)
    .await
    .unwrap();

    let message = Message::new("t", "after the relay reconnects");
    enqueue(&pool, std::slice::from_ref(&message)).await;
    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![message.id]);
    assert_eq!(pending(&pool).await, 0);
}
