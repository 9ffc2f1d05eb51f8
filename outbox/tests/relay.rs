//! The relay against a real Postgres: exactly-once in normal operation, per-key order, wake-ups,
//! crashes, shutdown.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Behaviour, Recorder, Running, eventually, pending, relay};
use courier_outbox::{Error, Message, Outbox, Relay, RelayState};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

async fn enqueue(pool: &PgPool, messages: &[Message]) {
    Outbox::new().enqueue_batch(pool, messages).await.unwrap();
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn rolled_back_message_is_never_published(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    let ghost = Message::new("orders", "rolled back");
    Outbox::new().enqueue(&mut *tx, &ghost).await.unwrap();
    tx.rollback().await.unwrap();
    let marker = Message::new("orders", "committed");
    enqueue(&pool, std::slice::from_ref(&marker)).await;

    let recorder = Recorder::default();
    let mut running = Running::start(relay(&pool, &recorder, "rollback"));
    recorder.wait_for_accepted(1).await;
    running.wait_for_state(RelayState::Idle).await;
    running.stop().await;

    assert_eq!(recorder.accepted_ids(), vec![marker.id]);
    assert_eq!(recorder.calls(ghost.id), 0);
    assert_eq!(pending(&pool).await, 0);
}

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

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn two_relays_publish_every_message_exactly_once(pool: PgPool) {
    let messages: Vec<Message> = (0..3000)
        .map(|i| {
            let message = Message::new("orders", format!("{i}"));
            if i % 3 == 0 {
                message
            } else {
                message.with_key(format!("key-{}", i % 97))
            }
        })
        .collect();
    enqueue(&pool, &messages).await;

    let recorder = Recorder::default();
    let first = Running::start(relay(&pool, &recorder, "twin-a").batch_size(50));
    let second = Running::start(relay(&pool, &recorder, "twin-b").batch_size(50));
    recorder.wait_for_accepted(messages.len()).await;
    first.stop().await;
    second.stop().await;

    let accepted = recorder.accepted_ids();
    let unique: HashSet<Uuid> = accepted.iter().copied().collect();
    assert_eq!(
        accepted.len(),
        messages.len(),
        "some message was published twice"
    );
    assert_eq!(unique, messages.iter().map(|m| m.id).collect());
    assert_eq!(pending(&pool).await, 0);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn same_key_order_survives_two_relays_and_failures(pool: PgPool) {
    let mut messages = Vec::new();
    for round in 0..25 {
        for key in 0..16 {
            messages.push(Message::new("payments", format!("{round}")).with_key(format!("k{key}")));
        }
    }
    enqueue(&pool, &messages).await;

    let recorder = Recorder::default();
    // Every message fails on its first call and on some later ones, from both relays.
    let calls = recorder.clone();
    recorder.set_rule(move |message| {
        let call = calls.calls(message.id);
        if call == 0 || (message.id.as_u128() >> 7).wrapping_add(u128::from(call)) % 4 == 0 {
            Behaviour::Fail
        } else {
            Behaviour::Accept
        }
    });
    let first = Running::start(
        relay(&pool, &recorder, "order-a")
            .batch_size(40)
            .max_attempts(100),
    );
    let second = Running::start(
        relay(&pool, &recorder, "order-b")
            .batch_size(40)
            .max_attempts(100),
    );
    recorder.wait_for_accepted(messages.len()).await;
    first.stop().await;
    second.stop().await;

    let mut rounds_by_key: HashMap<String, Vec<u32>> = HashMap::new();
    for message in recorder.accepted() {
        let round = std::str::from_utf8(&message.payload)
            .unwrap()
            .parse()
            .unwrap();
        rounds_by_key
            .entry(message.key.unwrap())
            .or_default()
            .push(round);
    }
    assert_eq!(rounds_by_key.len(), 16);
    for (key, rounds) in rounds_by_key {
        assert_eq!(
            rounds,
            (0..25).collect::<Vec<_>>(),
            "key {key} out of order"
        );
    }
    assert!(
        recorder.total_calls() > messages.len() as u32,
        "no failure was injected"
    );
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_failing_key_holds_its_followers_but_not_other_keys(pool: PgPool) {
    let bad: Vec<Message> = (0..3)
        .map(|i| Message::new("t", format!("bad {i}")).with_key("bad"))
        .collect();
    let good: Vec<Message> = (0..20)
        .map(|i| {
            let message = Message::new("t", format!("good {i}"));
            if i % 2 == 0 {
                message.with_key(format!("good-{i}"))
            } else {
                message
            }
        })
        .collect();
    enqueue(&pool, &[bad.clone(), good.clone()].concat()).await;

    let recorder = Recorder::default();
    recorder.set_rule(|message| {
        if message.key.as_deref() == Some("bad") {
            Behaviour::Fail
        } else {
            Behaviour::Accept
        }
    });
    let mut running = Running::start(relay(&pool, &recorder, "stuck-key").backoff(
        courier_outbox::Backoff {
            base: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
            factor: 1.0,
            jitter: 0.0,
        },
    ));
    recorder.wait_for_accepted(good.len()).await;
    // Idle means the relay claimed again and found nothing it may publish.
    running.wait_for_state(RelayState::Idle).await;
    running.stop().await;

    let accepted: HashSet<Uuid> = recorder.accepted_ids().into_iter().collect();
    assert_eq!(accepted, good.iter().map(|m| m.id).collect());
    assert_eq!(recorder.calls(bad[0].id), 1);
    assert_eq!(
        recorder.calls(bad[1].id),
        0,
        "a follower overtook its failing head"
    );
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM outbox.messages ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, vec![1, 0, 0]);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn relay_aborted_mid_batch_loses_nothing(pool: PgPool) {
    let messages: Vec<Message> = (0..200)
        .map(|i| Message::new("t", format!("{i}")).with_key(format!("k{}", i % 10)))
        .collect();
    enqueue(&pool, &messages).await;

    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::Hang);
    let doomed = Running::start(relay(&pool, &recorder, "doomed"));
    recorder
        .wait_until("a publish in flight", |r| r.total_calls() > 0)
        .await;
    doomed.task.abort();
    assert!(doomed.task.await.unwrap_err().is_cancelled());

    recorder.set_rule(|_| Behaviour::Accept);
    let heir = Running::start(relay(&pool, &recorder, "heir"));
    recorder.wait_for_accepted(messages.len()).await;
    heir.stop().await;

    let accepted: HashSet<Uuid> = recorder.accepted_ids().into_iter().collect();
    assert_eq!(accepted, messages.iter().map(|m| m.id).collect());
    assert_eq!(pending(&pool).await, 0);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn notify_wakes_an_idle_relay_long_before_its_poll(pool: PgPool) {
    let recorder = Recorder::default();
    // Both poll intervals are an hour: only the NOTIFY sent on commit can explain a publish.
    let mut running = Running::start(
        relay(&pool, &recorder, "sleeper").busy_poll_interval(Duration::from_secs(3600)),
    );
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
    let mut running = Running::start(
        relay(&pool, &recorder, "phoenix").busy_poll_interval(Duration::from_secs(3600)),
    );
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

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn delayed_message_waits_for_its_time(pool: PgPool) {
    let later = Message::new("t", "later").with_delay(Duration::from_secs(3600));
    let now = Message::new("t", "now");
    enqueue(&pool, &[later.clone(), now.clone()]).await;
    let recorder = Recorder::default();
    let mut running = Running::start(relay(&pool, &recorder, "patient"));
    recorder.wait_for_accepted(1).await;
    running.wait_for_state(RelayState::Idle).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![now.id]);
    assert_eq!(recorder.calls(later.id), 0);
    assert_eq!(pending(&pool).await, 1);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn retention_marks_rows_sent_instead_of_deleting(pool: PgPool) {
    let message = Message::new("t", "keep me");
    enqueue(&pool, std::slice::from_ref(&message)).await;
    let recorder = Recorder::default();
    let mut running =
        Running::start(relay(&pool, &recorder, "archivist").retention(Duration::from_secs(3600)));
    recorder.wait_for_accepted(1).await;
    running.wait_for_state(RelayState::Idle).await;
    running.stop().await;
    let (sent, attempts): (bool, i32) =
        sqlx::query_as("SELECT sent_at IS NOT NULL, attempts FROM outbox.messages WHERE id = $1")
            .bind(message.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(sent);
    assert_eq!(attempts, 1);
    assert_eq!(
        recorder.calls(message.id),
        1,
        "a sent row was published again"
    );
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn shutdown_past_the_grace_period_rolls_the_batch_back(pool: PgPool) {
    let message = Message::new("t", "in flight");
    enqueue(&pool, std::slice::from_ref(&message)).await;
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::Hang);
    let running = Running::start(
        relay(&pool, &recorder, "graceful").shutdown_grace(Duration::from_millis(10)),
    );
    recorder
        .wait_until("a publish in flight", |r| r.total_calls() > 0)
        .await;
    let mut state = running.state.clone();
    running.stop().await;
    assert_eq!(*state.borrow_and_update(), RelayState::Stopped);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM outbox.messages WHERE id = $1")
        .bind(message.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0, "the rolled-back batch left a trace");
}

#[sqlx::test]
async fn relay_refuses_a_database_without_the_outbox_tables(pool: PgPool) {
    let relay = Relay::builder(pool, Recorder::default()).build().unwrap();
    let error = relay.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(error, Error::NotMigrated), "{error}");
}

#[tokio::test]
async fn invalid_settings_are_refused_with_the_setting_named() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let error = Relay::builder(pool, Recorder::default())
        .batch_size(0)
        .build()
        .err()
        .expect("batch_size 0 must be refused");
    assert!(error.to_string().contains("batch_size"), "{error}");
}
