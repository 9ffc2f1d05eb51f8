//! One behavioural case, one test per store: `every_store!(case)` turns `async fn case<DB:
//! TestStore>(pool: Pool<DB>)` into a module `case` with the tests `postgres`, `sqlite` and
//! `mysql`.
//!
//! `#[sqlx::test]` reads `DATABASE_URL` (Postgres here) for every database kind, so the MySQL
//! test makes its own database on `MYSQL_URL` ([`MySqlTestDatabase`](courier_test_support::MySqlTestDatabase)).

/// `every_store!(a, b)` runs the cases on migrated databases; `every_store!(unmigrated: c)` on
/// empty ones.
#[allow(unused_macros)] // not every test binary has cases for every store
macro_rules! every_store {
    (unmigrated: $($case:ident),+ $(,)?) => {$(
        mod $case {
            #[sqlx::test(migrations = false)]
            async fn postgres(pool: sqlx::PgPool) {
                super::$case(pool).await;
            }

            #[sqlx::test(migrations = false)]
            async fn sqlite(pool: sqlx::SqlitePool) {
                super::$case(pool).await;
            }

            #[tokio::test]
            async fn mysql() {
                let db = courier_test_support::MySqlTestDatabase::create().await;
                super::$case(db.pool().clone()).await;
            }
        }
    )+};
    ($($case:ident),+ $(,)?) => {$(
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
                let db = courier_test_support::MySqlTestDatabase::create().await;
                courier_outbox::MYSQL_MIGRATOR.run(db.pool()).await.unwrap();
                super::$case(db.pool().clone()).await;
            }
        }
    )+};
}

pub(crate) use every_store;
