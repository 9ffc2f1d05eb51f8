//! The durable inbox against real databases (safeguard C4): every case runs on Postgres, SQLite
//! and MySQL (`store_support`).

mod store_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier_middleware::{Consumer, Delivery, Inbox, MemorySource, Reject, Stored, TxDelivery};
use courier_outbox::{Backoff, Message};
use sqlx::{MySql, MySqlConnection, PgConnection, Pool, Postgres, Sqlite, SqliteConnection};
use store_support::{PATIENCE, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::BoxError;

courier_test_support::postgres_for_tests!();

for_each_store!(
    a_delivery_is_acked_once_stored_and_processed_later,
    a_redelivered_message_is_stored_once,
    a_failed_row_is_retried_and_its_failed_writes_roll_back,
    a_row_is_dead_lettered_after_max_attempts_and_can_be_replayed,
    a_rejected_row_is_dead_lettered_at_once,
    a_crash_during_processing_is_processed_after_restart,
    an_idle_worker_wakes_when_a_row_is_stored,
    a_failed_attempt_past_its_lease_does_not_dead_letter_a_row_another_worker_processed,
    a_successful_attempt_past_its_lease_commits_nothing_on_a_row_another_worker_processed,
);

const GROUP: &str = "billing";

fn inbox<DB: Store>(pool: &Pool<DB>) -> Inbox<DB> {
    Inbox::new(pool.clone())
        .poll_interval(Duration::from_millis(10))
        .backoff(Backoff {
            base: Duration::ZERO,
            factor: 1.0,
            max: Duration::ZERO,
            jitter: 0.0,
        })
}

async fn write_effect<DB: Store>(request: &TxDelivery<DB>) -> Result<(), BoxError> {
    let mut conn = request.tx().lock().await;
    DB::insert_effect(
        &mut conn,
        request.delivery.message.id,
        &request.delivery.group,
    )
    .await?;
    Ok(())
}

/// A handler that writes one effect, then fails while `failures` is positive.
fn handler<DB: Store>(
    calls: &Arc<AtomicU32>,
    failures: u32,
) -> impl tower::Service<TxDelivery<DB>, Response = (), Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let calls = calls.clone();
    let failures = Arc::new(AtomicU32::new(failures));
    tower::service_fn(move |request: TxDelivery<DB>| {
        let calls = calls.clone();
        let failures = failures.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            write_effect(&request).await?;
            if failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("injected failure".into());
            }
            Ok(())
        }
    })
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    tokio::time::timeout(PATIENCE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting for {what}"));
}

async fn a_delivery_is_acked_once_stored_and_processed_later<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let inbox = inbox(&pool);
    let source = MemorySource::new(GROUP);
    source.push(Message::new("orders", "long work"));
    let shutdown = CancellationToken::new();
    let consumer = Consumer::builder(source.clone(), inbox.store()).build();
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));

    source.wait_until(|s| s.acked().len() == 1).await;
    // Acked, and nothing processed yet: the row waits in the inbox.
    assert_eq!(inbox.pending(GROUP).await.unwrap(), 1);
    assert_eq!(DB::effects(&pool).await, 0);

    let calls = Arc::new(AtomicU32::new(0));
    let working = tokio::spawn(
        inbox
            .worker(GROUP, handler(&calls, 0))
            .run(shutdown.clone()),
    );
    eventually("the row to be processed", || async {
        inbox.pending(GROUP).await.unwrap() == 0
    })
    .await;
    shutdown.cancel();
    consuming.await.unwrap();
    working.await.unwrap();
    assert_eq!(DB::effects(&pool).await, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn a_redelivered_message_is_stored_once<DB: Store>(pool: Pool<DB>) {
    let inbox = inbox(&pool);
    let delivery = Delivery::new(Message::new("orders", "m"), GROUP);
    assert_eq!(DB::insert(&inbox, &pool, &delivery).await, Stored::New);
    let again = delivery.clone().with_attempt(2);
    assert_eq!(DB::insert(&inbox, &pool, &again).await, Stored::Duplicate);
    assert_eq!(inbox.pending(GROUP).await.unwrap(), 1);
}

async fn a_failed_row_is_retried_and_its_failed_writes_roll_back<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let inbox = inbox(&pool);
    let delivery = Delivery::new(Message::new("orders", "m"), GROUP);
    DB::insert(&inbox, &pool, &delivery).await;
    let calls = Arc::new(AtomicU32::new(0));
    let shutdown = CancellationToken::new();
    let working = tokio::spawn(
        inbox
            .worker(GROUP, handler(&calls, 2))
            .run(shutdown.clone()),
    );
    eventually("the row to be processed", || async {
        inbox.pending(GROUP).await.unwrap() == 0
    })
    .await;
    shutdown.cancel();
    working.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Two failed attempts wrote and rolled back; the third committed.
    assert_eq!(DB::effects(&pool).await, 1);
}

async fn a_row_is_dead_lettered_after_max_attempts_and_can_be_replayed<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let inbox = inbox(&pool).max_attempts(3);
    let message = Message::new("orders", "poison").with_header("h", "v");
    DB::insert(&inbox, &pool, &Delivery::new(message.clone(), GROUP)).await;
    let calls = Arc::new(AtomicU32::new(0));
    let shutdown = CancellationToken::new();
    let working = tokio::spawn(
        inbox
            .worker(GROUP, handler(&calls, u32::MAX))
            .run(shutdown.clone()),
    );
    eventually("the dead letter", || async {
        inbox.dead_letters(GROUP).await.unwrap().len() == 1
    })
    .await;
    shutdown.cancel();
    working.await.unwrap();

    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(DB::effects(&pool).await, 0);
    let dead = inbox.dead_letters(GROUP).await.unwrap().remove(0);
    assert_eq!(dead.message.id, message.id);
    assert_eq!(dead.message.headers["h"], "v");
    assert_eq!(dead.message.payload, message.payload);
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.last_error, "injected failure");
    // A redelivery of a dead-lettered message is not stored again.
    let redelivered = Delivery::new(message.clone(), GROUP).with_attempt(2);
    assert_eq!(
        DB::insert(&inbox, &pool, &redelivered).await,
        Stored::Duplicate
    );

    assert_eq!(inbox.replay(GROUP, &[message.id]).await.unwrap(), 1);
    assert_eq!(inbox.pending(GROUP).await.unwrap(), 1);
    assert!(inbox.dead_letters(GROUP).await.unwrap().is_empty());
}

async fn a_rejected_row_is_dead_lettered_at_once<DB: Store>(pool: Pool<DB>) {
    let inbox = inbox(&pool).max_attempts(10);
    let delivery = Delivery::new(Message::new("orders", "bad"), GROUP);
    DB::insert(&inbox, &pool, &delivery).await;
    let shutdown = CancellationToken::new();
    let reject =
        tower::service_fn(|_: TxDelivery<DB>| async { Err::<(), _>(Reject::new("malformed")) });
    let working = tokio::spawn(inbox.worker(GROUP, reject).run(shutdown.clone()));
    eventually("the dead letter", || async {
        inbox.dead_letters(GROUP).await.unwrap().len() == 1
    })
    .await;
    shutdown.cancel();
    working.await.unwrap();
    assert_eq!(inbox.dead_letters(GROUP).await.unwrap()[0].attempts, 1);
}

async fn a_crash_during_processing_is_processed_after_restart<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    let inbox = inbox(&pool).lease(Duration::ZERO);
    let message = Message::new("orders", "m");
    DB::insert(&inbox, &pool, &Delivery::new(message.clone(), GROUP)).await;

    // The first worker writes its effect, then hangs until it is killed.
    let started = Arc::new(Notify::new());
    let hanging = {
        let started = started.clone();
        tower::service_fn(move |request: TxDelivery<DB>| {
            let started = started.clone();
            async move {
                write_effect(&request).await?;
                started.notify_one();
                std::future::pending::<()>().await;
                Ok::<(), BoxError>(())
            }
        })
    };
    let crashed = tokio::spawn(inbox.worker(GROUP, hanging).run(CancellationToken::new()));
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .expect("the first worker never started");
    crashed.abort();
    assert!(crashed.await.unwrap_err().is_cancelled());

    // Restart.
    let calls = Arc::new(AtomicU32::new(0));
    let shutdown = CancellationToken::new();
    let working = tokio::spawn(
        inbox
            .worker(GROUP, handler(&calls, 0))
            .run(shutdown.clone()),
    );
    eventually("the row to be processed after the restart", || async {
        inbox.pending(GROUP).await.unwrap() == 0
    })
    .await;
    shutdown.cancel();
    working.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The crashed attempt's write rolled back; only the restarted one's remains.
    assert_eq!(DB::effects(&pool).await, 1);
    assert_eq!(DB::inbox_attempts(&pool, message.id).await, 2);
}

/// Postgres wakes the worker with the insert trigger's `NOTIFY`, SQLite and MySQL with the
/// in-process signal [`Inbox::insert`] fires.
async fn an_idle_worker_wakes_when_a_row_is_stored<DB: Store>(pool: Pool<DB>) {
    DB::create_effects(&pool).await;
    // Polling alone would not find the row within the test's patience.
    let inbox = inbox(&pool).poll_interval(Duration::from_secs(3600));
    let calls = Arc::new(AtomicU32::new(0));
    let shutdown = CancellationToken::new();
    let working = tokio::spawn(
        inbox
            .worker(GROUP, handler(&calls, 0))
            .run(shutdown.clone()),
    );
    DB::workers_listen(&pool).await;
    // Another group's row is not this worker's to process.
    let other = Delivery::new(Message::new("orders", "other"), "shipping");
    DB::insert(&inbox, &pool, &other).await;
    let mine = Delivery::new(Message::new("orders", "m"), GROUP);
    DB::insert(&inbox, &pool, &mine).await;
    eventually("the row to be processed", || async {
        inbox.pending(GROUP).await.unwrap() == 0
    })
    .await;
    shutdown.cancel();
    working.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(inbox.pending("shipping").await.unwrap(), 1);
}

/// Ends the handler's transaction early and begins a fresh one that holds no lock, so that
/// another worker can claim the row while the handler still runs: what a killed connection does
/// to a slow attempt, or what the moment between a failed attempt's rollback and the recording of
/// its failure allows.
trait EndTransaction: Store {
    fn end_transaction(conn: &mut Self::Connection) -> impl Future<Output = ()> + Send;
}

impl EndTransaction for Postgres {
    async fn end_transaction(conn: &mut PgConnection) {
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    }
}

impl EndTransaction for Sqlite {
    async fn end_transaction(conn: &mut SqliteConnection) {
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
        // Deferred: takes no lock until it writes.
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    }
}

impl EndTransaction for MySql {
    async fn end_transaction(conn: &mut MySqlConnection) {
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
        sqlx::query("START TRANSACTION")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

/// Worker A claims the row (lease zero: it runs out at once) and loses it while its handler runs;
/// worker B claims and processes it; then A's handler finishes, failing or succeeding (writing an
/// effect) as `succeed` says, and A records its outcome. Returns B's handler calls.
async fn a_late_attempt_after_another_worker_processed_the_row<DB: EndTransaction>(
    pool: &Pool<DB>,
    succeed: bool,
) -> u32 {
    DB::create_effects(pool).await;
    // One attempt allowed: a failure of A dead-letters the row.
    let inbox = inbox(pool).lease(Duration::ZERO).max_attempts(1);
    DB::insert(
        &inbox,
        pool,
        &Delivery::new(Message::new("orders", "m"), GROUP),
    )
    .await;

    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = {
        let (started, go) = (started.clone(), go.clone());
        tower::service_fn(move |request: TxDelivery<DB>| {
            let (started, go) = (started.clone(), go.clone());
            async move {
                DB::end_transaction(&mut *request.tx().lock().await).await;
                started.notify_one();
                go.notified().await;
                if !succeed {
                    return Err::<(), BoxError>("the slow attempt failed".into());
                }
                write_effect(&request).await
            }
        })
    };
    let stop_a = CancellationToken::new();
    let worker_a = tokio::spawn(inbox.worker(GROUP, slow).run(stop_a.clone()));
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .expect("worker A never started");

    let calls = Arc::new(AtomicU32::new(0));
    let stop_b = CancellationToken::new();
    let worker_b = tokio::spawn(inbox.worker(GROUP, handler(&calls, 0)).run(stop_b.clone()));
    eventually("worker B to process the row", || async {
        inbox.pending(GROUP).await.unwrap() == 0
    })
    .await;
    stop_b.cancel();
    worker_b.await.unwrap();

    // A finishes its attempt (a stopped worker finishes the row in hand, then returns).
    go.notify_one();
    stop_a.cancel();
    worker_a.await.unwrap();
    calls.load(Ordering::SeqCst)
}

async fn a_failed_attempt_past_its_lease_does_not_dead_letter_a_row_another_worker_processed<
    DB: EndTransaction,
>(
    pool: Pool<DB>,
) {
    let calls = a_late_attempt_after_another_worker_processed_the_row(&pool, false).await;
    assert_eq!(calls, 1);
    let inbox = inbox(&pool);
    assert!(
        inbox.dead_letters(GROUP).await.unwrap().is_empty(),
        "worker A dead-lettered the row worker B processed"
    );
    assert_eq!(inbox.pending(GROUP).await.unwrap(), 0);
    assert_eq!(DB::effects(&pool).await, 1);
}

async fn a_successful_attempt_past_its_lease_commits_nothing_on_a_row_another_worker_processed<
    DB: EndTransaction,
>(
    pool: Pool<DB>,
) {
    let calls = a_late_attempt_after_another_worker_processed_the_row(&pool, true).await;
    assert_eq!(calls, 1);
    // B's effect only: A no longer held the row, so its writes rolled back.
    assert_eq!(DB::effects(&pool).await, 1);
    assert!(inbox(&pool).dead_letters(GROUP).await.unwrap().is_empty());
}
