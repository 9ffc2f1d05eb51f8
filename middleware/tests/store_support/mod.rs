//! Runs one behavioural test against the three stores: each case is a generic `async fn` over the
//! database, and [`for_each_store!`] makes a `postgres` and an `sqlite` `#[sqlx::test]` and a
//! `mysql` test (a database of its own on `MYSQL_URL`) of it. The raw SQL a test needs (its
//! business table, counting rows, ageing a record) sits behind [`Store`], one impl per database.

#![allow(dead_code, unreachable_pub)] // each test binary uses a part of it

use std::future::Future;
use std::time::Duration;

use courier_middleware::{Delivery, Inbox, Stored, TxDatabase};
use courier_test_support::MySqlTestDatabase;
use sqlx::{
    MySql, MySqlConnection, MySqlPool, PgConnection, PgPool, Pool, Postgres, Sqlite,
    SqliteConnection, SqlitePool,
};
use uuid::Uuid;

/// How long a test waits for a condition before failing; never asserted on.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `mod $case { postgres, sqlite, mysql }`, each calling the generic `$case` with its store's pool.
#[macro_export]
macro_rules! for_each_store {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
            async fn postgres(pool: sqlx::PgPool) {
                super::$case(pool).await;
            }

            #[sqlx::test(migrator = "courier_outbox::SQLITE_MIGRATOR")]
            async fn sqlite(pool: sqlx::SqlitePool) {
                super::$case(pool).await;
            }

            #[tokio::test]
            async fn mysql() {
                let db = $crate::store_support::mysql_database().await;
                super::$case(db.pool().clone()).await;
            }
        }
    )*};
}

/// A MySQL database of the test's own with the outbox and inbox tables; dropped with the value.
pub async fn mysql_database() -> MySqlTestDatabase {
    let db = MySqlTestDatabase::create().await;
    courier_outbox::MYSQL_MIGRATOR
        .run(db.pool())
        .await
        .expect("migrating the MySQL test database");
    db
}

/// The SQL a test writes itself, per database. The business table is
/// `effects (message_id, consumer_group)`.
pub trait Store: TxDatabase {
    /// Creates the `effects` table.
    fn create_effects(pool: &Pool<Self>) -> impl Future<Output = ()>;

    /// Rows in `effects`.
    fn effects(pool: &Pool<Self>) -> impl Future<Output = i64>;

    /// A handler's business write, in its transaction.
    fn insert_effect(
        conn: &mut Self::Connection,
        message_id: Uuid,
        group: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// A statement that fails inside the handler's transaction (on Postgres it also aborts it).
    fn failing_statement(conn: &mut Self::Connection) -> impl Future<Output = ()> + Send;

    /// Idempotency records stored.
    fn records(pool: &Pool<Self>) -> impl Future<Output = i64>;

    /// Makes the record of `key` older by `by`.
    fn age_record(pool: &Pool<Self>, key: &str, by: Duration) -> impl Future<Output = ()>;

    /// Returns once a second delivery of a message is waiting for the first one's transaction, as
    /// far as the database lets a test see it.
    fn second_writer_waits(pool: &Pool<Self>) -> impl Future<Output = ()>;

    /// [`Inbox::insert`] with the pool as executor.
    fn insert(
        inbox: &Inbox<Self>,
        pool: &Pool<Self>,
        delivery: &Delivery,
    ) -> impl Future<Output = Stored>;

    /// The `attempts` of the inbox row of `id`.
    fn inbox_attempts(pool: &Pool<Self>, id: Uuid) -> impl Future<Output = i64>;

    /// Returns once idle inbox workers would be woken by a new row.
    fn workers_listen(pool: &Pool<Self>) -> impl Future<Output = ()>;
}

async fn poll_until<F: Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    tokio::time::timeout(PATIENCE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gave up waiting for {what}"));
}

impl Store for Postgres {
    async fn create_effects(pool: &PgPool) {
        sqlx::query(
            "CREATE TABLE effects (message_id uuid NOT NULL, consumer_group text NOT NULL)",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    async fn effects(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn insert_effect(
        conn: &mut PgConnection,
        message_id: Uuid,
        group: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO effects (message_id, consumer_group) VALUES ($1, $2)")
            .bind(message_id)
            .bind(group)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn failing_statement(conn: &mut PgConnection) {
        let _ = sqlx::query("SELECT 1/0").execute(conn).await;
    }

    async fn records(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM courier_inbox.processed")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn age_record(pool: &PgPool, key: &str, by: Duration) {
        sqlx::query(
            "UPDATE courier_inbox.processed
             SET processed_at = processed_at - make_interval(secs => $2) WHERE key = $1",
        )
        .bind(key)
        .bind(by.as_secs_f64())
        .execute(pool)
        .await
        .unwrap();
    }

    async fn second_writer_waits(pool: &PgPool) {
        // The second insert of the record blocks on the first transaction's row lock.
        poll_until(
            "the second delivery to wait on the first one's record",
            || async {
                sqlx::query_scalar::<_, bool>(
                    "SELECT count(*) > 0 FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(pool)
                .await
                .unwrap()
            },
        )
        .await;
    }

    async fn insert(inbox: &Inbox<Self>, pool: &PgPool, delivery: &Delivery) -> Stored {
        inbox.insert(pool, delivery).await.unwrap()
    }

    async fn inbox_attempts(pool: &PgPool, id: Uuid) -> i64 {
        let attempts: i32 =
            sqlx::query_scalar("SELECT attempts FROM courier_inbox.messages WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        attempts.into()
    }

    async fn workers_listen(pool: &PgPool) {
        poll_until("the worker to listen", || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT count(*) > 0 FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_one(pool)
            .await
            .unwrap()
        })
        .await;
    }
}

impl Store for Sqlite {
    async fn create_effects(pool: &SqlitePool) {
        sqlx::query(
            "CREATE TABLE effects (message_id BLOB NOT NULL, consumer_group TEXT NOT NULL)",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    async fn effects(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn insert_effect(
        conn: &mut SqliteConnection,
        message_id: Uuid,
        group: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO effects (message_id, consumer_group) VALUES ($1, $2)")
            .bind(message_id)
            .bind(group)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn failing_statement(conn: &mut SqliteConnection) {
        let _ = sqlx::query("SELECT * FROM no_such_table")
            .execute(conn)
            .await;
    }

    async fn records(pool: &SqlitePool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM courier_inbox_processed")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn age_record(pool: &SqlitePool, key: &str, by: Duration) {
        sqlx::query(
            "UPDATE courier_inbox_processed SET processed_at = processed_at - $2 WHERE key = $1",
        )
        .bind(key)
        .bind(i64::try_from(by.as_micros()).unwrap())
        .execute(pool)
        .await
        .unwrap();
    }

    async fn second_writer_waits(pool: &SqlitePool) {
        // SQLite shows no lock waits to other connections. Two connections checked out (the
        // first delivery's transaction, the second's `BEGIN IMMEDIATE`) is as close as it gets;
        // if the second has not reached its BEGIN yet, it still runs after the first, which the
        // test's outcome covers too.
        poll_until("the second delivery to take a connection", || async {
            pool.size() as usize - pool.num_idle() >= 2
        })
        .await;
    }

    async fn insert(inbox: &Inbox<Self>, pool: &SqlitePool, delivery: &Delivery) -> Stored {
        inbox.insert(pool, delivery).await.unwrap()
    }

    async fn inbox_attempts(pool: &SqlitePool, id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT attempts FROM courier_inbox_messages WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn workers_listen(_: &SqlitePool) {
        // In-process wake-ups: a row stored before the worker waits is found by its next claim,
        // one stored after wakes it. There is no listener to wait for.
    }
}

impl Store for MySql {
    async fn create_effects(pool: &MySqlPool) {
        sqlx::query(
            "CREATE TABLE effects (message_id BINARY(16) NOT NULL,
                                   consumer_group VARCHAR(255) NOT NULL) ENGINE = InnoDB",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    async fn effects(pool: &MySqlPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn insert_effect(
        conn: &mut MySqlConnection,
        message_id: Uuid,
        group: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO effects (message_id, consumer_group) VALUES (?, ?)")
            .bind(message_id)
            .bind(group)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn failing_statement(conn: &mut MySqlConnection) {
        let _ = sqlx::query("SELECT * FROM no_such_table")
            .execute(conn)
            .await;
    }

    async fn records(pool: &MySqlPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM courier_inbox_processed")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn age_record(pool: &MySqlPool, key: &str, by: Duration) {
        sqlx::query(
            "UPDATE courier_inbox_processed
             SET processed_at = processed_at - INTERVAL ? MICROSECOND WHERE `key` = ?",
        )
        .bind(i64::try_from(by.as_micros()).unwrap())
        .bind(key.as_bytes())
        .execute(pool)
        .await
        .unwrap();
    }

    async fn second_writer_waits(pool: &MySqlPool) {
        lock_waits_at_least(pool, 1).await;
    }

    async fn insert(inbox: &Inbox<Self>, pool: &MySqlPool, delivery: &Delivery) -> Stored {
        inbox.insert(pool, delivery).await.unwrap()
    }

    async fn inbox_attempts(pool: &MySqlPool, id: Uuid) -> i64 {
        let attempts: i32 =
            sqlx::query_scalar("SELECT attempts FROM courier_inbox_messages WHERE id = ?")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        attempts.into()
    }

    async fn workers_listen(_: &MySqlPool) {
        // In-process wake-ups, as on SQLite: nothing to wait for.
    }
}

/// Returns once `n` transactions of this test's database wait for a row lock.
///
/// Read from `SHOW ENGINE INNODB STATUS` (MySQL 8 and MariaDB alike), not from
/// `information_schema.INNODB_TRX`: MariaDB refreshes that table's cache only when nobody read it
/// for 100 ms, so tests polling it in parallel keep each other's view stale.
pub async fn lock_waits_at_least(pool: &MySqlPool, n: usize) {
    poll_until(
        &format!("{n} transaction(s) to wait for a lock"),
        || async {
            let ours: Vec<i64> = sqlx::query_scalar(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE()",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            let (_, _, status): (String, String, String) =
                sqlx::query_as("SHOW ENGINE INNODB STATUS")
                    .fetch_one(pool)
                    .await
                    .unwrap();
            let waiting = status
                .split("---TRANSACTION")
                .filter(|transaction| transaction.contains("LOCK WAIT"))
                .filter(|transaction| {
                    ours.iter()
                        .any(|id| transaction.contains(&format!("thread id {id},")))
                })
                .count();
            waiting >= n
        },
    )
    .await;
}
