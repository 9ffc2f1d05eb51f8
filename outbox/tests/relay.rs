//! The relay on every store: exactly-once in normal operation, per-key order, crashes, shutdown.
//! What only one store does is in `relay_postgres.rs` and `relay_sqlite.rs`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{
    Behaviour, Recorder, Running, TestStore, eventually, every_store, relay, wake_only_relay,
};
use courier_outbox::{Backoff, Error, Message, Outbox, Relay, RelayState};
use sqlx::{Executor, Pool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

every_store!(
    rolled_back_message_is_never_published,
    a_failing_key_holds_its_followers_but_not_other_keys,
    relay_aborted_mid_batch_loses_nothing,
    delayed_message_waits_for_its_time,
    delayed_message_wakes_an_idle_relay_when_due,
    retention_marks_rows_sent_instead_of_deleting,
    sent_rows_are_purged_after_their_retention,
    shutdown_past_the_grace_period_gives_the_batch_back,
);
every_store!(
    unmigrated: relay_refuses_a_database_without_the_outbox_tables,
    invalid_settings_are_refused_with_the_setting_named,
);

async fn enqueue<DB: TestStore>(pool: &Pool<DB>, messages: &[Message])
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    Outbox::new().enqueue_batch(pool, messages).await.unwrap();
}

async fn rolled_back_message_is_never_published<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut tx = DB::begin(&pool).await;
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
    assert_eq!(DB::pending(&pool).await, 0);
}

async fn a_failing_key_holds_its_followers_but_not_other_keys<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
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
    let mut running = Running::start(relay(&pool, &recorder, "stuck-key").backoff(Backoff {
        base: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        factor: 1.0,
        jitter: 0.0,
    }));
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
    let attempts: Vec<i64> = DB::rows(&pool).await.iter().map(|r| r.attempts).collect();
    assert_eq!(attempts, vec![1, 0, 0]);
}

async fn relay_aborted_mid_batch_loses_nothing<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let messages: Vec<Message> = (0..200)
        .map(|i| Message::new("t", format!("{i}")).with_key(format!("k{}", i % 10)))
        .collect();
    enqueue(&pool, &messages).await;

    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::Hang);
    // On SQLite the rows stay leased to the dead relay until its lease runs out; Postgres ignores
    // the lease (the row locks die with the connection).
    let doomed =
        Running::start(relay(&pool, &recorder, "doomed").lease(Duration::from_millis(300)));
    recorder
        .wait_until("a publish in flight", |r| r.total_calls() > 0)
        .await;
    doomed.abort().await;

    recorder.set_rule(|_| Behaviour::Accept);
    let heir = Running::start(relay(&pool, &recorder, "heir"));
    recorder.wait_for_accepted(messages.len()).await;
    heir.stop().await;

    let accepted: HashSet<Uuid> = recorder.accepted_ids().into_iter().collect();
    assert_eq!(accepted, messages.iter().map(|m| m.id).collect());
    assert_eq!(DB::pending(&pool).await, 0);
}

async fn delayed_message_waits_for_its_time<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
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
    let rows = DB::rows(&pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].id, rows[0].attempts), (later.id, 0));
}

async fn delayed_message_wakes_an_idle_relay_when_due<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let soon = Message::new("t", "soon").with_delay(Duration::from_secs(1));
    enqueue(&pool, std::slice::from_ref(&soon)).await;
    let recorder = Recorder::default();
    // No poll: only the relay's look at the next due time explains a publish. The busy polls
    // after a wake-up (Postgres: the listener's first) and the settle polls after going idle are
    // over within about 260 ms, well before the message is due. (Busy polls an hour apart would
    // not do: a busy relay skips the next-due query, counting on its next busy poll.)
    let running = Running::start(
        wake_only_relay(&pool, &recorder, "punctual")
            .busy_poll_interval(Duration::from_millis(1))
            .linger(Duration::from_millis(1)),
    );
    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![soon.id]);
    assert_eq!(DB::pending(&pool).await, 0);
}

async fn retention_marks_rows_sent_instead_of_deleting<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let message = Message::new("t", "keep me");
    enqueue(&pool, std::slice::from_ref(&message)).await;
    let recorder = Recorder::default();
    let mut running =
        Running::start(relay(&pool, &recorder, "archivist").retention(Duration::from_secs(3600)));
    recorder.wait_for_accepted(1).await;
    running.wait_for_state(RelayState::Idle).await;
    running.stop().await;
    let row = DB::row(&pool, message.id).await;
    assert!(row.sent);
    assert!(!row.leased);
    assert_eq!(row.attempts, 1);
    assert_eq!(
        recorder.calls(message.id),
        1,
        "a sent row was published again"
    );
}

async fn sent_rows_are_purged_after_their_retention<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let messages = [Message::new("t", "brief"), Message::new("t", "stay")];
    enqueue(&pool, &messages).await;
    let recorder = Recorder::default();
    let running = Running::start(
        relay(&pool, &recorder, "forgetful")
            .retention(Duration::from_millis(1))
            .maintenance_interval(Duration::from_millis(20)),
    );
    recorder.wait_for_accepted(messages.len()).await;
    eventually("the sent rows to be purged", async || {
        DB::pending(&pool).await == 0
    })
    .await;
    running.stop().await;
    assert_eq!(recorder.total_calls(), 2);
}

async fn shutdown_past_the_grace_period_gives_the_batch_back<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
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
    // Postgres rolls the claim back; SQLite releases the lease.
    let row = DB::row(&pool, message.id).await;
    assert_eq!(row.attempts, 0, "the given-back batch left a trace");
    assert!(!row.leased, "the given-back batch is still leased");
    assert!(!row.sent);
}

async fn relay_refuses_a_database_without_the_outbox_tables<DB: TestStore>(pool: Pool<DB>) {
    let relay = Relay::builder(pool, Recorder::default()).build().unwrap();
    let error = relay.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(error, Error::NotMigrated), "{error}");
}

async fn invalid_settings_are_refused_with_the_setting_named<DB: TestStore>(pool: Pool<DB>) {
    let refused = |builder: courier_outbox::RelayBuilder<DB, Recorder>, setting: &str| {
        let error = builder
            .build()
            .err()
            .unwrap_or_else(|| panic!("{setting} out of range must be refused"));
        assert!(error.to_string().contains(setting), "{error}");
    };
    let builder = || Relay::builder(pool.clone(), Recorder::default());
    refused(builder().batch_size(0), "batch_size");
    refused(builder().lease(Duration::ZERO), "lease");
    refused(builder().name(""), "name");
}
