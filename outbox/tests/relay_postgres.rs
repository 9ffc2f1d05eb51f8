//! What the relay does on Postgres only: concurrent writers committing out of sequence order,
//! NOTIFY wake-ups and the idle-relay marks behind them, reconnecting after a killed connection,
//! the server ending the connection of a relay cut off by a network partition.
//! SQLite has one writer, no NOTIFY and no relay connection of its own; see `relay_sqlite.rs`.

mod common;
#[path = "relay_postgres/proxy.rs"]
mod proxy;

use std::net::ToSocketAddrs;
use std::time::Duration;

use common::{Behaviour, Recorder, Running, TestStore, relay, wake_only_relay};
use courier_outbox::{Message, Outbox, RelayState};
use proxy::FreezableProxy;
use sqlx::postgres::PgPoolOptions;
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

// The relay's claims start past the rows it deleted (a cursor on the primary key); the cursor must
// never pass the row of a transaction still open, however many batches go out meanwhile.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn late_commit_with_lower_sequence_is_published_after_many_batches(pool: PgPool) {
    let mut slow = pool.begin().await.unwrap();
    let late = Message::new("orders", "late").with_key("late");
    Outbox::new().enqueue(&mut *slow, &late).await.unwrap();
    let early: Vec<Message> = (0..2_000)
        .map(|n| Message::new("orders", format!("early {n}")).with_key(format!("k{}", n % 50)))
        .collect();
    enqueue(&pool, &early).await;

    let recorder = Recorder::default();
    let mut running = Running::start(relay(&pool, &recorder, "late-commit-many").batch_size(50));
    recorder.wait_for_accepted(early.len()).await;
    running.wait_for_state(RelayState::Idle).await;
    slow.commit().await.unwrap();
    recorder.wait_for_accepted(early.len() + 1).await;
    running.stop().await;

    assert_eq!(recorder.accepted_ids().last(), Some(&late.id));
    assert_eq!(pending(&pool).await, 0);
}

// outbox.messages is a queue: vacuumed after a fixed number of deleted rows, not after a share of
// the table (which on a large backlog lets hundreds of thousands of dead entries pile up).
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn the_outbox_table_is_vacuumed_after_a_fixed_number_of_deleted_rows(pool: PgPool) {
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'outbox.messages'::regclass",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for option in [
        "autovacuum_vacuum_scale_factor=0",
        "autovacuum_vacuum_threshold=10000",
    ] {
        assert!(
            options.iter().any(|o| o == option),
            "{option} missing from {options:?}"
        );
    }
}

// NOTIFY, the idle-relay marks, the listener and the relay's own connection exist on Postgres only.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn notify_wakes_an_idle_relay_long_before_its_poll(pool: PgPool) {
    let recorder = Recorder::default();
    // Only the NOTIFY sent on commit can explain a publish: the row is written as a writer in
    // another process would, without this process's in-process signal.
    let mut running = Running::start(wake_only_relay(&pool, &recorder, "sleeper"));
    running.wait_for_state(RelayState::Idle).await;
    let id = Message::new("t", "wake up").id;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO outbox.messages (id, topic, payload) VALUES ($1, 't', 'wake up')")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![id]);
}

/// `expression` over the `pg_stat_activity` row of this database's connection named `name`.
fn activity(name: &str, expression: &str) -> String {
    format!(
        "(SELECT {expression} FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = '{name}')"
    )
}

// A busy relay has withdrawn its idle mark, so the trigger sends no NOTIFY: a writer in the
// relay's process wakes it through the in-process signal, at insert time (before the commit),
// and the relay keeps looking until the commit lands.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_writer_in_the_relays_process_wakes_a_busy_relay_before_it_commits(pool: PgPool) {
    let first = Message::new("t", "makes the relay busy");
    enqueue(&pool, std::slice::from_ref(&first)).await;
    let recorder = Recorder::default();
    // Busy for an hour, busy polls an hour apart: only a wake-up explains a second publish.
    let mut running =
        Running::start(wake_only_relay(&pool, &recorder, "busy").linger(Duration::from_secs(3600)));
    recorder.wait_for_accepted(1).await;
    running.wait_for_state(RelayState::Idle).await;
    let marks: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.idle_relays")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(marks, 0, "a busy relay must not ask for NOTIFY");

    // The listener wakes the relay once it is connected; let that wake-up pass first.
    let relay_query = activity("busy", "query_start");
    let listened = activity("busy-listener", "state_change");
    let listener_up = activity("busy-listener", "state = 'idle' AND query LIKE 'LISTEN%'");
    eventually(
        &pool,
        "the listener is up",
        &format!("SELECT coalesce({listener_up}, false)"),
    )
    .await;
    let after_listener = format!("SELECT coalesce({relay_query} > {listened}, false)");
    eventually(
        &pool,
        "the relay looked after the listener's wake-up",
        &after_listener,
    )
    .await;
    // The follow-up looks after that wake-up end within about 130 ms.
    let quiet = format!("SELECT {relay_query} < clock_timestamp() - interval '500 ms'");
    eventually(&pool, "the relay's follow-up looks to end", &quiet).await;

    let before: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let second = Message::new("t", "wakes it");
    let mut tx = pool.begin().await.unwrap();
    Outbox::new().enqueue(&mut *tx, &second).await.unwrap();
    // The relay looks before the commit (and finds nothing yet): only the insert explains it.
    common::eventually("the insert woke the busy relay", async || {
        sqlx::query_scalar::<_, bool>(&format!("SELECT coalesce({relay_query} > $1, false)"))
            .bind(before)
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
    tx.commit().await.unwrap();
    recorder.wait_for_accepted(2).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![first.id, second.id]);
    assert_eq!(pending(&pool).await, 0);
}

// The claim's check for an earlier message of the key that is not due yet: a scheduled head holds
// its key's followers, whatever else is scheduled, and no other key.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_scheduled_head_holds_its_keys_followers_among_many_scheduled_rows(pool: PgPool) {
    let hour = Duration::from_secs(3600);
    let head = Message::new("t", "head").with_key("k").with_delay(hour);
    let follower = Message::new("t", "follower").with_key("k");
    let other = Message::new("t", "other key").with_key("j");
    let mut messages: Vec<Message> = (0..200)
        .map(|i| {
            Message::new("t", "scheduled")
                .with_key(format!("s{}", i % 20))
                .with_delay(hour)
        })
        .collect();
    messages.extend([head.clone(), follower.clone(), other.clone()]);
    // A scheduled row of `j` after `other` holds nothing: only earlier rows hold a key.
    messages.push(Message::new("t", "later j").with_key("j").with_delay(hour));
    enqueue(&pool, &messages).await;

    let recorder = Recorder::default();
    let mut running = Running::start(relay(&pool, &recorder, "scheduled"));
    recorder.wait_for_accepted(1).await;
    running.wait_for_state(RelayState::Idle).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![other.id]);
    assert_eq!(recorder.calls(follower.id), 0);
    assert_eq!(pending(&pool).await, 203);
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

/// A pool like `pool` whose connections go through `proxy`.
fn through(pool: &PgPool, proxy: &FreezableProxy) -> PgPool {
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .host(&proxy.addr.ip().to_string())
        .port(proxy.addr.port());
    PgPoolOptions::new().connect_lazy_with(options)
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn partitions_and_rows_of_a_relay_cut_off_mid_batch_go_to_another_after_its_session_timeout(
    pool: PgPool,
) {
    let messages: Vec<Message> = (0..30)
        .map(|i| {
            let message = Message::new("t", format!("{i}"));
            // Keyed messages sit in partitions; unkeyed ones are held by the row locks alone.
            if i % 3 == 0 {
                message
            } else {
                message.with_key(format!("k{}", i % 10))
            }
        })
        .collect();
    enqueue(&pool, &messages).await;

    let options = pool.connect_options();
    let upstream = (options.get_host(), options.get_port())
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let proxy = FreezableProxy::start(upstream).await;
    let stuck = Recorder::default();
    stuck.set_rule(|_| Behaviour::Hang);
    // Alone, it owns every partition; it claims every row and publishes them (forever).
    let cut_off = Running::start(
        relay(&through(&pool, &proxy), &stuck, "cut-off").session_timeout(Duration::from_secs(1)),
    );
    stuck
        .wait_until("the batch in flight", |r| r.total_calls() > 0)
        .await;
    // The partition: its connection now holds the partitions and the claimed rows, idle in
    // transaction, and nothing it sends arrives any more.
    proxy.freeze();

    let heir_publisher = Recorder::default();
    let heir = Running::start(relay(&pool, &heir_publisher, "heir"));
    heir_publisher.wait_for_accepted(messages.len()).await;
    heir.stop().await;
    cut_off.abort().await;

    let mut published = heir_publisher.accepted_ids();
    let mut expected: Vec<_> = messages.iter().map(|m| m.id).collect();
    published.sort();
    expected.sort();
    assert_eq!(published, expected, "every message, once, by the heir");
    assert_eq!(pending(&pool).await, 0);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_relay_that_publishes_longer_than_its_session_timeout_keeps_its_batch(pool: PgPool) {
    let message = Message::new("t", "slow broker");
    enqueue(&pool, std::slice::from_ref(&message)).await;
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::WaitForGate);
    let running = Running::start(
        relay(&pool, &recorder, "patient")
            .session_timeout(Duration::from_secs(2))
            .publish_timeout(Duration::from_secs(3600)),
    );
    recorder
        .wait_until("the publish in flight", |r| r.total_calls() > 0)
        .await;
    // Its transaction outlives the server's idle-in-transaction bound because the relay pings.
    eventually(
        &pool,
        "a claim transaction older than two and a half session timeouts",
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE application_name = 'patient' AND datname = current_database()
                          AND now() - xact_start > interval '5 seconds')",
    )
    .await;
    recorder.open_gate();
    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.calls(message.id), 1, "published once");
    assert_eq!(pending(&pool).await, 0);
}

/// Whether `name`'s relay holds two open transactions (its batch in hand and one claimed ahead).
fn two_open_transactions(name: &str) -> String {
    format!(
        "SELECT count(*) >= 2 FROM pg_stat_activity
         WHERE application_name IN ('{name}', '{name}-ahead') AND datname = current_database()
           AND state = 'idle in transaction'"
    )
}

// While a batch is published the relay claims the next one on its second connection. That claim
// deletes its rows only in its own transaction: nothing leaves the outbox before the broker
// acknowledged it, and a relay that dies holding both batches loses neither.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_batch_claimed_ahead_leaves_the_outbox_only_when_published(pool: PgPool) {
    let messages: Vec<Message> = (0..4)
        .map(|n| Message::new("t", format!("m{n}")).with_key(format!("k{n}")))
        .collect();
    enqueue(&pool, &messages).await;
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::WaitForGate);
    let running = Running::start(
        relay(&pool, &recorder, "ahead")
            .batch_size(2)
            .publish_timeout(Duration::from_secs(3600)),
    );
    recorder
        .wait_until("the first batch in flight", |r| r.total_calls() == 2)
        .await;
    eventually(
        &pool,
        "the next batch claimed ahead",
        &two_open_transactions("ahead"),
    )
    .await;
    assert_eq!(
        pending(&pool).await,
        4,
        "no claim committed before its publish"
    );
    assert_eq!(
        recorder.total_calls(),
        2,
        "the batch claimed ahead waits its turn"
    );
    running.abort().await;

    let recorder = Recorder::default();
    let running = Running::start(relay(&pool, &recorder, "after"));
    recorder.wait_for_accepted(4).await;
    running.stop().await;
    let mut published = recorder.accepted_ids();
    published.sort();
    let mut expected: Vec<_> = messages.iter().map(|m| m.id).collect();
    expected.sort();
    assert_eq!(published, expected);
    assert_eq!(pending(&pool).await, 0);
}

// The batch claimed ahead holds later messages of the keys in hand. If any message of the batch in
// hand is not published, the batch claimed ahead goes back: its messages of that key must not
// overtake the retry.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_failure_gives_back_the_batch_claimed_ahead_and_keys_keep_their_order(pool: PgPool) {
    let open = async || {
        sqlx::query_scalar(&two_open_transactions("in-order"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    common::ahead::a_failure_gives_back_the_batch_claimed_ahead(pool.clone(), open).await;
}

// A batch smaller than the limit says its successors are still being written. Rows committed
// while it is published are claimed on the second connection as soon as it was published whole,
// while it is recorded and committed: they wait for neither that commit nor a claim after it.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn rows_committed_during_a_publish_are_claimed_while_the_batch_commits(pool: PgPool) {
    let first = Message::new("t", "first").with_key("a");
    enqueue(&pool, std::slice::from_ref(&first)).await;
    let recorder = Recorder::default();
    let first_id = first.id;
    recorder.set_rule(move |message| {
        if message.id == first_id {
            Behaviour::WaitForGate
        } else {
            Behaviour::Hang
        }
    });
    let running = Running::start(
        relay(&pool, &recorder, "partial")
            .batch_size(10)
            .publish_timeout(Duration::from_secs(3600)),
    );
    recorder
        .wait_until("the first batch in flight", |r| r.total_calls() == 1)
        .await;
    let second = Message::new("t", "second").with_key("b");
    enqueue(&pool, std::slice::from_ref(&second)).await;
    recorder.open_gate();
    recorder
        .wait_until("the second message in flight", |r| r.calls(second.id) == 1)
        .await;
    eventually(
        &pool,
        "the second message's batch open on the relay's second connection",
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE application_name = 'partial-ahead' AND datname = current_database()
                          AND state = 'idle in transaction')",
    )
    .await;
    running.abort().await;
    assert_eq!(recorder.calls(first.id), 1);
}
