//! The MySQL / MariaDB store: rows leased by primary key in short READ COMMITTED transactions,
//! in-process wake-ups plus polling. Tables `outbox_messages`, `outbox_failures` and
//! `outbox_claim_turn` in the pool's database.
//!
//! Written for MySQL 8.0 and MariaDB 10.6+ and checked on MariaDB 10.11. The SQL is what both
//! accept: no `RETURNING` (MySQL 8 has none; MariaDB has it on `INSERT` and `DELETE` only), no
//! subquery on the table a statement modifies (MySQL error 1093), no
//! `LIMIT` inside `IN (…)`. READ COMMITTED needs `binlog_format` ROW or MIXED where the binary
//! log is on (the default on both since MySQL 5.7.7 / MariaDB 10.2.4).

mod claim;
mod columns;
mod failures;
mod housekeeping;
mod retry;
mod session;
mod writer;

use std::sync::Arc;

use futures::future::BoxFuture;

use sqlx::migrate::Migrator;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::{Acquire, Executor, MySql, MySqlPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sealed::Dialect;
use crate::relay::RelayConfig;
use crate::{Error, FailedMessage, FailureFilter, Message, ReplayReport, Result};
#[allow(unreachable_pub)] // named by the sealed `Store` trait only
pub use session::MySqlSession;

/// Wakes this process's relays of this store on every insert (`super::signal`).
pub(super) static SIGNAL: super::signal::Signal = super::signal::Signal::new();

/// ER_NO_SUCH_TABLE: "Table 'db.outbox_messages' doesn't exist".
const NO_SUCH_TABLE: u16 = 1146;

impl Dialect for MySql {
    type Session = MySqlSession;

    fn migrator() -> &'static Migrator {
        &crate::MYSQL_MIGRATOR
    }

    fn map_error(error: sqlx::Error) -> Error {
        if let sqlx::Error::Database(db) = &error
            && let Some(mysql) = db.try_downcast_ref::<MySqlDatabaseError>()
            && mysql.number() == NO_SUCH_TABLE
            && mysql.message().contains("outbox_")
        {
            return Error::NotMigrated;
        }
        Error::Database(error)
    }

    fn insert_one<'a, 'e: 'a, E>(
        executor: E,
        message: &'a Message,
    ) -> BoxFuture<'a, sqlx::Result<()>>
    where
        E: Executor<'e, Database = Self> + 'a,
    {
        Box::pin(writer::insert_one(executor, message))
    }

    fn insert_many<'a, 'e: 'a, E>(
        executor: E,
        messages: &'a [Message],
    ) -> BoxFuture<'a, sqlx::Result<u64>>
    where
        E: Executor<'e, Database = Self> + 'a,
    {
        Box::pin(writer::insert_many(executor, messages))
    }

    fn enqueued() {
        SIGNAL.enqueued();
    }

    fn list_failures<'a, 'e: 'a, E>(
        executor: E,
        filter: &'a FailureFilter,
    ) -> BoxFuture<'a, sqlx::Result<Vec<FailedMessage>>>
    where
        E: Executor<'e, Database = Self> + 'a,
    {
        Box::pin(failures::list(executor, filter))
    }

    fn replay_failures<'a, 'c: 'a, A>(
        conn: A,
        filter: &'a FailureFilter,
    ) -> BoxFuture<'a, sqlx::Result<ReplayReport>>
    where
        A: Acquire<'c, Database = Self> + Send + 'a,
    {
        Box::pin(failures::replay(conn, filter))
    }

    fn purge_failures<'a, 'e: 'a, E>(
        executor: E,
        filter: &'a FailureFilter,
    ) -> BoxFuture<'a, sqlx::Result<u64>>
    where
        E: Executor<'e, Database = Self> + 'a,
    {
        Box::pin(failures::purge(executor, filter))
    }

    async fn open_session(pool: &MySqlPool, config: &RelayConfig) -> Result<MySqlSession> {
        MySqlSession::open(pool, config).await
    }

    fn spawn_wakeup(
        _pool: &MySqlPool,
        _config: &RelayConfig,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        SIGNAL.spawn(wake, stop)
    }
}
