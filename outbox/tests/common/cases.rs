//! One behavioural case, two tests: `two_stores!(case)` turns `async fn case<DB: TestStore>(pool:
//! Pool<DB>)` into a module `case` with the tests `postgres` and `sqlite`.

/// `two_stores!(a, b)` runs the cases on migrated databases; `two_stores!(unmigrated: c)` on
/// empty ones.
#[allow(unused_macros)] // not every test binary has two-store cases
macro_rules! two_stores {
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
        }
    )+};
}

pub(crate) use two_stores;
