//! Idempotency and inbox cases whose outcome depends on how MySQL / MariaDB (InnoDB) locks:
//! deadlocks it breaks by rolling a transaction back (and then going on in autocommit mode), and
//! purges next to open transactions. The cases shared with Postgres and SQLite are in
//! `idempotency.rs` and `inbox.rs`.

mod store_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier_middleware::{Delivery, Handled, IdempotencyLayer, Inbox, TxDelivery};
use courier_outbox::{Backoff, Message};
use sqlx::{MySql, MySqlConnection, MySqlPool};
use store_support::{PATIENCE, Store, lock_waits_at_least, mysql_database};
use tokio::sync::{Notify, Semaphore};
use tower::{BoxError, Layer, ServiceExt};

const GROUP: &str = "billing";

fn delivery(message: &Message) -> Delivery {
    Delivery::new(message.clone(), GROUP)
}

/// Three deliveries of one key: the first holds its record while the two others wait on it, then
/// fails and rolls back. Both waiting inserts then hold a shared lock on the record and need the
/// exclusive one: InnoDB breaks that deadlock by rolling one back (error 1213). The layer begins
/// that one's transaction again (the record was its first statement), so neither fails: one
/// handles the message, the other finds its record.
#[tokio::test]
async fn deliveries_waiting_on_a_rolled_back_record_deadlock_and_are_restarted_not_failed() {
    let db = mysql_database().await;
    let pool = db.pool().clone();
    MySql::create_effects(&pool).await;
    let calls = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let handler = {
        let (calls, gate) = (calls.clone(), gate.clone());
        tower::service_fn(move |request: TxDelivery<MySql>| {
            let (calls, gate) = (calls.clone(), gate.clone());
            async move {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                write_effect(&request).await?;
                if call == 0 {
                    gate.acquire().await?.forget();
                    return Err::<(), BoxError>("the first delivery fails".into());
                }
                Ok(())
            }
        })
    };
    let service = IdempotencyLayer::new(pool.clone()).layer(handler);
    let message = Message::new("payments", "p");

    let first = tokio::spawn(service.clone().oneshot(delivery(&message)));
    wait_for("the first handler call", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let others: Vec<_> = (2..=3)
        .map(|attempt| {
            tokio::spawn(
                service
                    .clone()
                    .oneshot(delivery(&message).with_attempt(attempt)),
            )
        })
        .collect();
    lock_waits_at_least(&pool, 2).await;
    gate.add_permits(1);

    assert!(first.await.unwrap().is_err());
    let mut outcomes = Vec::new();
    for other in others {
        outcomes.push(other.await.unwrap().expect("a waiting delivery failed"));
    }
    outcomes.sort_by_key(Handled::is_duplicate);
    assert_eq!(outcomes, vec![Handled::Processed(()), Handled::Duplicate]);
    assert_eq!(MySql::effects(&pool).await, 1);
    assert_eq!(MySql::records(&pool).await, 1);
}

/// A handler whose transaction InnoDB rolls back to break a deadlock, and that swallows the error
/// and answers `Ok`: the record went with the rollback, so the layer must not ack (its commit
/// would commit nothing); the redelivery runs the handler again, for one effect in all.
#[tokio::test]
async fn a_handler_that_swallows_a_deadlock_is_not_acked_and_its_redelivery_runs_it() {
    let db = mysql_database().await;
    let pool = db.pool().clone();
    MySql::create_effects(&pool).await;
    let deadlock = Deadlock::prepare(&pool).await;
    let swallowing = {
        let deadlock = deadlock.clone();
        tower::service_fn(move |request: TxDelivery<MySql>| {
            let deadlock = deadlock.clone();
            async move {
                write_effect(&request).await?;
                let mut conn = request.tx().lock().await;
                let lost = deadlock.lose(&mut conn).await;
                assert!(
                    lost,
                    "the handler's transaction was not the deadlock's victim"
                );
                // Swallowed: the handler answers Ok.
                Ok::<(), BoxError>(())
            }
        })
    };
    let message = Message::new("payments", "p");
    let answer = IdempotencyLayer::new(pool.clone())
        .layer(swallowing)
        .oneshot(delivery(&message))
        .await;
    deadlock.finish().await;

    let error = answer.expect_err("acked a delivery whose transaction was rolled back");
    assert!(
        error
            .to_string()
            .contains("its transaction had already failed"),
        "{error}"
    );
    assert_eq!(MySql::records(&pool).await, 0);
    assert_eq!(MySql::effects(&pool).await, 0);

    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let calls = calls.clone();
        tower::service_fn(move |request: TxDelivery<MySql>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                write_effect(&request).await
            }
        })
    };
    let redelivered = IdempotencyLayer::new(pool.clone())
        .layer(handler)
        .oneshot(delivery(&message).with_attempt(2))
        .await
        .unwrap();
    assert_eq!(redelivered, Handled::Processed(()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(MySql::effects(&pool).await, 1);
}

/// The same on the inbox: the worker must neither commit nor mark the row done (in autocommit
/// mode the mark alone would commit, and the handler's writes would be lost); the row is handled
/// again.
#[tokio::test]
async fn an_inbox_handler_that_swallows_a_deadlock_leaves_its_row_to_be_handled_again() {
    let db = mysql_database().await;
    let pool = db.pool().clone();
    MySql::create_effects(&pool).await;
    let deadlock = Deadlock::prepare(&pool).await;
    let inbox = Inbox::new(pool.clone())
        .lease(Duration::ZERO)
        .poll_interval(Duration::from_millis(10))
        .backoff(Backoff {
            base: Duration::ZERO,
            factor: 1.0,
            max: Duration::ZERO,
            jitter: 0.0,
        });
    let message = Message::new("orders", "m");
    MySql::insert(&inbox, &pool, &delivery(&message)).await;

    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let (calls, deadlock) = (calls.clone(), deadlock.clone());
        tower::service_fn(move |request: TxDelivery<MySql>| {
            let (calls, deadlock) = (calls.clone(), deadlock.clone());
            async move {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                write_effect(&request).await?;
                if call == 0 {
                    let mut conn = request.tx().lock().await;
                    assert!(deadlock.lose(&mut conn).await, "not the deadlock's victim");
                }
                Ok::<(), BoxError>(())
            }
        })
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let working = tokio::spawn(inbox.worker(GROUP, handler).run(shutdown.clone()));
    wait_for("the first attempt", || calls.load(Ordering::SeqCst) >= 1).await;
    deadlock.finish().await;
    poll("the row to be processed", || async {
        inbox.pending(GROUP).await.unwrap() == 0
    })
    .await;
    shutdown.cancel();
    working.await.unwrap();

    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(MySql::effects(&pool).await, 1);
    assert!(inbox.dead_letters(GROUP).await.unwrap().is_empty());
}

/// Purging expired records deletes them in batches (more than one here), keeps the rest, and does
/// not wait for a delivery whose transaction holds a fresh record open: a range delete on the
/// records' age would lock up to that record (the first one past the cutoff) and wait for it.
#[tokio::test]
async fn purging_in_batches_does_not_wait_for_an_open_delivery() {
    let db = mysql_database().await;
    let pool = db.pool().clone();
    MySql::create_effects(&pool).await;
    let expired = 1_234;
    let mut old = sqlx::QueryBuilder::<MySql>::new(
        "INSERT INTO courier_inbox_processed (consumer_group, `key`, processed_at) ",
    );
    old.push_values(0..expired, |mut row, n| {
        row.push_bind(GROUP.as_bytes())
            .push_bind(format!("old-{n}").into_bytes())
            .push("UTC_TIMESTAMP(6) - INTERVAL 30 DAY");
    });
    old.build().execute(&pool).await.unwrap();
    let started = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let holding = {
        let (started, release) = (started.clone(), release.clone());
        tower::service_fn(move |request: TxDelivery<MySql>| {
            let (started, release) = (started.clone(), release.clone());
            async move {
                write_effect(&request).await?;
                started.notify_one();
                release.acquire().await?.forget();
                Ok::<(), BoxError>(())
            }
        })
    };
    let layer = IdempotencyLayer::new(pool.clone());
    let open = tokio::spawn(
        layer
            .clone()
            .layer(holding)
            .oneshot(delivery(&Message::new("payments", "p"))),
    );
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .expect("the delivery never ran");

    let purged = tokio::time::timeout(PATIENCE, layer.purge_expired())
        .await
        .expect("the purge waited for the open delivery")
        .unwrap();
    assert_eq!(purged, expired);
    release.add_permits(1);
    assert_eq!(open.await.unwrap().unwrap(), Handled::Processed(()));
    assert_eq!(MySql::records(&pool).await, 1);
}

async fn write_effect(request: &TxDelivery<MySql>) -> Result<(), BoxError> {
    let mut conn = request.tx().lock().await;
    MySql::insert_effect(&mut conn, request.delivery.message.id, GROUP).await?;
    Ok(())
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    poll(what, || std::future::ready(condition())).await;
}

async fn poll<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    tokio::time::timeout(PATIENCE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting for {what}"));
}

/// A real deadlock between a handler's transaction and a heavier one of the test, which InnoDB
/// resolves by rolling back the lighter: the handler's.
#[derive(Clone)]
struct Deadlock {
    pool: MySqlPool,
    /// The test's transaction: it wrote many rows (so it weighs more) and locked row 2.
    other: Arc<tokio::sync::Mutex<Option<sqlx::Transaction<'static, MySql>>>>,
    /// Its request for row 1, waiting on the handler.
    waiting: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Set once the handler's side of the deadlock is over.
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl Deadlock {
    async fn prepare(pool: &MySqlPool) -> Self {
        sqlx::raw_sql(
            "CREATE TABLE locks (id INT PRIMARY KEY) ENGINE = InnoDB;
             INSERT INTO locks VALUES (1), (2);
             CREATE TABLE ballast (n INT PRIMARY KEY) ENGINE = InnoDB;",
        )
        .execute(pool)
        .await
        .unwrap();
        let mut other = pool.begin().await.unwrap();
        let mut ballast = sqlx::QueryBuilder::<MySql>::new("INSERT INTO ballast (n) ");
        ballast.push_values(0..200, |mut row, n| {
            row.push_bind(n);
        });
        ballast.build().execute(&mut *other).await.unwrap();
        sqlx::query("SELECT id FROM locks WHERE id = 2 FOR UPDATE")
            .execute(&mut *other)
            .await
            .unwrap();
        Self {
            pool: pool.clone(),
            other: Arc::new(tokio::sync::Mutex::new(Some(other))),
            waiting: Arc::default(),
            lost: Arc::default(),
        }
    }

    /// In the handler's transaction: lock row 1, let the test's transaction wait for it, then ask
    /// for row 2. Returns whether the handler's transaction was the victim (error 1213).
    async fn lose(&self, conn: &mut MySqlConnection) -> bool {
        sqlx::query("SELECT id FROM locks WHERE id = 1 FOR UPDATE")
            .execute(&mut *conn)
            .await
            .unwrap();
        let other = self.other.clone();
        *self.waiting.lock().await = Some(tokio::spawn(async move {
            let mut other = other.lock().await;
            let tx = other.as_mut().unwrap();
            sqlx::query("SELECT id FROM locks WHERE id = 1 FOR UPDATE")
                .execute(&mut **tx)
                .await
                .unwrap();
        }));
        lock_waits_at_least(&self.pool, 1).await;
        let error = sqlx::query("SELECT id FROM locks WHERE id = 2 FOR UPDATE")
            .execute(&mut *conn)
            .await
            .expect_err("no deadlock");
        self.lost.store(true, Ordering::SeqCst);
        error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "40001")
    }

    /// Ends the test's transaction (its request for row 1 was granted when the handler's
    /// transaction was rolled back).
    async fn finish(&self) {
        wait_for("the handler's side of the deadlock", || {
            self.lost.load(Ordering::SeqCst)
        })
        .await;
        if let Some(waiting) = self.waiting.lock().await.take() {
            waiting.await.unwrap();
        }
        if let Some(other) = self.other.lock().await.take() {
            other.rollback().await.unwrap();
        }
    }
}
