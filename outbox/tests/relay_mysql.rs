//! What the relay does on MySQL / MariaDB only: application inserts that never wait for a claim
//! and a claim that never waits for them, leases that outlive a killed relay, and deadlocks and
//! lock-wait timeouts provoked for real and retried inside the store (the relay never goes to
//! `Reconnecting` for them). Postgres and SQLite have their own files.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Behaviour, PATIENCE, Recorder, Running, TestStore, eventually, relay};
use courier_outbox::{Message, Outbox, RelayState};
use courier_test_support::MySqlTestDatabase;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, Executor, MySql, MySqlConnection, MySqlPool};
use uuid::Uuid;

/// A migrated database of this test's own.
async fn database() -> MySqlTestDatabase {
    let db = MySqlTestDatabase::create().await;
    courier_outbox::MYSQL_MIGRATOR.run(db.pool()).await.unwrap();
    db
}

async fn enqueue(pool: &MySqlPool, messages: &[Message]) {
    Outbox::new().enqueue_batch(pool, messages).await.unwrap();
}

/// A connection of its own, outside the relay's pool, to hold locks the relay will meet.
async fn blocker(db: &MySqlTestDatabase) -> MySqlConnection {
    MySqlConnection::connect(&db.url()).await.unwrap()
}

/// Every state the relay passes through, as seen by a task that follows its state channel.
fn record_states(running: &Running) -> Arc<Mutex<Vec<RelayState>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut state = running.state.clone();
    let log = seen.clone();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let now = *state.borrow_and_update();
            log.lock().unwrap().push(now);
        }
    });
    seen
}

/// Whether a connection to this test's database is running a statement that starts with
/// `sql` (it is waiting for a lock, when the test holds the one it needs).
async fn running_statement(pool: &MySqlPool, sql: &str) -> bool {
    let running: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST
         WHERE DB = DATABASE() AND INFO LIKE CONCAT(?, '%')",
    )
    .bind(sql)
    .fetch_one(pool)
    .await
    .unwrap();
    running > 0
}

/// Counts `outbox_relay_lock_retries_total`: the store's own retries of a deadlocked or timed-out
/// transaction. Process-wide; nextest runs each test in a process of its own.
mod lock_retries {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Once};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit,
    };

    static RETRIES: AtomicU64 = AtomicU64::new(0);

    struct Retries;

    impl CounterFn for Retries {
        fn increment(&self, value: u64) {
            RETRIES.fetch_add(value, Ordering::SeqCst);
        }
        fn absolute(&self, value: u64) {
            RETRIES.fetch_max(value, Ordering::SeqCst);
        }
    }

    struct Only;

    impl metrics::Recorder for Only {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            if key.name() == "outbox_relay_lock_retries_total" {
                Counter::from_arc(Arc::new(Retries))
            } else {
                Counter::noop()
            }
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Starts counting (once per process).
    pub(crate) fn install() {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| metrics::set_global_recorder(Only).unwrap());
    }

    /// Retries counted so far.
    pub(crate) fn count() -> u64 {
        RETRIES.load(Ordering::SeqCst)
    }
}

/// Publishing order per key, as the recorder saw it.
fn order_by_key(messages: &[Message]) -> HashMap<String, Vec<Uuid>> {
    let mut by_key: HashMap<String, Vec<Uuid>> = HashMap::new();
    for message in messages {
        if let Some(key) = &message.key {
            by_key.entry(key.clone()).or_default().push(message.id);
        }
    }
    by_key
}

#[tokio::test]
async fn many_writers_and_several_relays_never_deadlock_or_wait_on_each_other() {
    let db = database().await;
    let pool = db.pool().clone();
    let recorder = Recorder::default();
    let relays: Vec<Running> = (0..3)
        .map(|n| Running::start(relay(&pool, &recorder, &format!("relay-{n}")).batch_size(20)))
        .collect();
    let states: Vec<_> = relays.iter().map(record_states).collect();

    // Writers at the application's default isolation (REPEATABLE READ), several inserts per
    // transaction, shared keys: the classic recipe for gap-lock deadlocks with a locking claim.
    // None of them retries, so any deadlock or lock-wait timeout fails the test.
    const WRITERS: usize = 12;
    const TRANSACTIONS: usize = 20;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for t in 0..TRANSACTIONS {
                    let mut tx = MySql::begin(&pool).await;
                    for m in 0..3 {
                        let message = Message::new("orders", format!("{w}/{t}/{m}"))
                            .with_key(format!("key-{}", (w + t + m) % 7));
                        Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
                        written.push(message);
                    }
                    Outbox::new()
                        .enqueue(&mut *tx, &Message::new("audit", format!("{w}/{t}")))
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
                written
            })
        })
        .collect();
    let mut written = 0;
    for writer in writers {
        written += tokio::time::timeout(PATIENCE, writer)
            .await
            .expect("a writer waited: the relays held locks its inserts needed")
            .expect("a writer failed: deadlock or lock-wait timeout against the relays")
            .len();
    }
    let total = written + WRITERS * TRANSACTIONS;
    recorder.wait_for_accepted(total).await;
    for running in relays {
        running.stop().await;
    }

    let accepted = recorder.accepted();
    assert_eq!(accepted.len(), total, "some message was published twice");
    // Each writer's messages of one key were inserted in order; so were they published.
    for (key, ids) in order_by_key(&accepted) {
        let rows: Vec<Uuid> = ids.clone();
        let mut by_seq = rows.clone();
        let seqs: HashMap<Uuid, usize> = accepted
            .iter()
            .enumerate()
            .map(|(at, message)| (message.id, at))
            .collect();
        by_seq.sort_by_key(|id| seqs[id]);
        assert_eq!(rows, by_seq, "key {key} out of order");
    }
    assert_eq!(MySql::pending(&pool).await, 0);
    for seen in states {
        let seen = seen.lock().unwrap();
        assert!(!seen.contains(&RelayState::Reconnecting), "{seen:?}");
    }
}

#[tokio::test]
async fn claim_does_not_wait_for_an_open_application_transaction_and_its_late_commit_is_published()
{
    let db = database().await;
    let pool = db.pool().clone();

    // The application inserts first (the lower sequence number) and keeps its transaction open.
    let mut open = MySql::begin(&pool).await;
    let late = Message::new("orders", "committed late").with_key("order-1");
    Outbox::new().enqueue(&mut *open, &late).await.unwrap();
    let early = Message::new("orders", "committed at once").with_key("order-2");
    enqueue(&pool, std::slice::from_ref(&early)).await;

    // A claim that took locks the open insert holds (or gap locks before it) would wait here.
    let recorder = Recorder::default();
    let running = Running::start(
        relay(&pool, &recorder, "not-waiting").poll_interval(Duration::from_millis(50)),
    );
    recorder.wait_for_accepted(1).await;
    assert_eq!(recorder.accepted_ids(), vec![early.id]);

    // No high-water mark: the lower sequence number committed after a higher one still goes out.
    // The writer's wake-up fired at insert time, before this commit; the poll finds the row.
    open.commit().await.unwrap();
    recorder.wait_for_accepted(2).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![early.id, late.id]);
}

#[tokio::test]
async fn application_commits_while_the_relay_publishes_a_batch_of_the_same_keys() {
    let db = database().await;
    let pool = db.pool().clone();
    let stuck: Vec<Message> = (0..10)
        .map(|i| Message::new("orders", format!("{i}")).with_key(format!("key-{}", i % 2)))
        .collect();
    enqueue(&pool, &stuck).await;
    let recorder = Recorder::default();
    recorder.set_rule(|_| Behaviour::Hang);
    let running = Running::start(
        relay(&pool, &recorder, "publisher-bound").shutdown_grace(Duration::from_millis(10)),
    );
    recorder
        .wait_until("a publish in flight", |r| r.total_calls() > 0)
        .await;

    // The batch is leased and being published: the relay holds no row lock, so inserting more
    // messages of the same keys (same index ranges) commits at once.
    let commit = async {
        let mut tx = MySql::begin(&pool).await;
        for i in 0..10 {
            let message =
                Message::new("orders", format!("more {i}")).with_key(format!("key-{}", i % 2));
            Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
        }
        tx.commit().await.unwrap();
    };
    tokio::time::timeout(PATIENCE, commit)
        .await
        .expect("the application could not commit while the relay was publishing");
    let rows = MySql::rows(&pool).await;
    assert_eq!(rows.iter().filter(|row| row.leased).count(), stuck.len());
    running.stop().await;
    assert!(MySql::rows(&pool).await.iter().all(|row| !row.leased));
}

#[tokio::test]
async fn heir_publishes_everything_a_relay_killed_mid_batch_had_leased() {
    let db = database().await;
    let pool = db.pool().clone();
    let messages: Vec<Message> = (0..50)
        .map(|i| Message::new("t", format!("{i}")).with_key(format!("k{}", i % 5)))
        .collect();
    enqueue(&pool, &messages).await;

    let doomed_publisher = Recorder::default();
    doomed_publisher.set_rule(|message| {
        if message.payload.as_ref() == b"0" {
            Behaviour::Accept
        } else {
            Behaviour::Hang
        }
    });
    let doomed =
        Running::start(relay(&pool, &doomed_publisher, "doomed").lease(Duration::from_millis(300)));
    doomed_publisher
        .wait_until("a publish in flight", |r| r.total_calls() > 1)
        .await;
    let rows = MySql::rows(&pool).await;
    assert!(rows.iter().all(|row| row.leased), "{rows:?}");
    // Killed mid-batch: one message accepted by the broker, its outcome never recorded.
    doomed.abort().await;

    let heir_publisher = Recorder::default();
    let heir = Running::start(
        relay(&pool, &heir_publisher, "heir").poll_interval(Duration::from_millis(50)),
    );
    heir_publisher.wait_for_accepted(messages.len()).await;
    heir.stop().await;
    let mut published = heir_publisher.accepted_ids();
    let mut expected: Vec<_> = messages.iter().map(|m| m.id).collect();
    published.sort();
    expected.sort();
    assert_eq!(
        published, expected,
        "nothing lost, nothing twice by the heir"
    );
    // Per key, the heir starts again from the head the dead relay had leased.
    for (key, ids) in order_by_key(&heir_publisher.accepted()) {
        let wanted: Vec<Uuid> = messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(key.as_str()))
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, wanted, "key {key} out of order");
    }
    assert_eq!(MySql::pending(&pool).await, 0);
}

#[tokio::test]
async fn lock_wait_timeout_in_a_claim_is_retried_inside_the_store() {
    let db = database().await;
    // The relay's pool gives up on a lock after one second (the server default is 50 s).
    let relay_pool = MySqlPoolOptions::new()
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION innodb_lock_wait_timeout = 1")
                    .await?;
                Ok(())
            })
        })
        .connect(&db.url())
        .await
        .unwrap();
    let message = Message::new("orders", "behind a lock");
    enqueue(&relay_pool, std::slice::from_ref(&message)).await;

    // Another transaction holds the claim turn, as a relay stuck in its claim would.
    let mut holder = blocker(&db).await;
    let mut turn = holder.begin().await.unwrap();
    sqlx::query("SELECT id FROM outbox_claim_turn WHERE id = 1 FOR UPDATE")
        .execute(&mut *turn)
        .await
        .unwrap();

    lock_retries::install();
    let recorder = Recorder::default();
    let running = Running::start(relay(&relay_pool, &recorder, "patient"));
    let states = record_states(&running);
    // One claim waits, times out (1205) and the store runs it again: a second transaction waits.
    eventually("the claim to wait for its turn", async || {
        running_statement(db.pool(), "SELECT UTC_TIMESTAMP(6) FROM outbox_claim_turn").await
    })
    .await;
    eventually("the claim to time out (1205) and be retried", async || {
        lock_retries::count() >= 1
    })
    .await;
    assert_eq!(recorder.total_calls(), 0);
    turn.rollback().await.unwrap();

    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![message.id]);
    let states = states.lock().unwrap();
    assert!(!states.contains(&RelayState::Reconnecting), "{states:?}");
}

#[tokio::test]
async fn deadlock_in_a_claim_is_retried_inside_the_store() {
    let db = database().await;
    let pool = db.pool().clone();
    let message = Message::new("orders", "deadlocked once");
    enqueue(&pool, std::slice::from_ref(&message)).await;

    // The other transaction is made heavy (many rows written), so that InnoDB picks the relay's
    // claim, which has changed nothing yet, as the deadlock victim.
    let mut other = blocker(&db).await;
    other
        .execute("CREATE TABLE ballast (n INT PRIMARY KEY)")
        .await
        .unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO ballast (n)
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 500)
         SELECT n FROM g",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    // It locks the message row the claim will want...
    sqlx::query("SELECT seq FROM outbox_messages FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();

    lock_retries::install();
    let recorder = Recorder::default();
    let running = Running::start(relay(&pool, &recorder, "victim"));
    let states = record_states(&running);
    // ...the claim takes its turn and waits for that row...
    eventually("the claim to wait for the message row", async || {
        running_statement(db.pool(), "UPDATE outbox_messages SET leased_until").await
    })
    .await;
    // ...and this transaction now asks for the turn the claim holds: a deadlock. Getting the
    // turn means InnoDB rolled the claim back.
    tokio::time::timeout(
        PATIENCE,
        sqlx::query("SELECT id FROM outbox_claim_turn WHERE id = 1 FOR UPDATE").execute(&mut *tx),
    )
    .await
    .expect("no deadlock was detected")
    .expect("the claim was meant to be the deadlock victim, not this transaction");
    assert_eq!(recorder.total_calls(), 0);
    tx.rollback().await.unwrap();
    eventually("the store to retry the deadlocked claim", async || {
        lock_retries::count() >= 1
    })
    .await;

    recorder.wait_for_accepted(1).await;
    running.stop().await;
    assert_eq!(recorder.accepted_ids(), vec![message.id]);
    let states = states.lock().unwrap();
    assert!(!states.contains(&RelayState::Reconnecting), "{states:?}");
}

#[tokio::test]
async fn claimed_ahead_is_leased_and_leaves_only_when_published() {
    let db = database().await;
    common::ahead::claimed_ahead_is_leased_and_leaves_only_when_published(db.pool().clone()).await;
}

#[tokio::test]
async fn a_failure_gives_back_the_batch_claimed_ahead() {
    let db = database().await;
    let pool = db.pool().clone();
    let leased = async || common::ahead::two_batches_leased(&pool).await;
    common::ahead::a_failure_gives_back_the_batch_claimed_ahead(pool.clone(), leased).await;
}
