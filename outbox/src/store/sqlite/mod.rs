//! The SQLite store: rows leased in short IMMEDIATE transactions, in-process wake-ups plus polling.
//! Tables `outbox_messages` and `outbox_failures` (SQLite has no schemas).

mod claim;
mod failures;
mod housekeeping;
mod session;
mod signal;
mod time;
mod writer;

use std::sync::Arc;

use sqlx::migrate::Migrator;
use sqlx::{Acquire, Executor, Sqlite, SqlitePool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sealed::Dialect;
use crate::relay::RelayConfig;
use crate::{Error, FailedMessage, FailureFilter, Message, Result};
#[allow(unreachable_pub)] // named by the sealed `Store` trait only
pub use session::SqliteSession;

impl Dialect for Sqlite {
    type Session = SqliteSession;

    fn migrator() -> &'static Migrator {
        &crate::SQLITE_MIGRATOR
    }

    fn map_error(error: sqlx::Error) -> Error {
        if let sqlx::Error::Database(db) = &error {
            let message = db.message();
            if message.contains("no such table") && message.contains("outbox_") {
                return Error::NotMigrated;
            }
        }
        Error::Database(error)
    }

    async fn insert_one<'e, E>(executor: E, message: &Message) -> sqlx::Result<()>
    where
        E: Executor<'e, Database = Self>,
    {
        writer::insert_one(executor, message).await
    }

    async fn insert_many<'e, E>(executor: E, messages: &[Message]) -> sqlx::Result<u64>
    where
        E: Executor<'e, Database = Self>,
    {
        writer::insert_many(executor, messages).await
    }

    fn enqueued() {
        signal::enqueued();
    }

    async fn list_failures<'e, E>(
        executor: E,
        filter: &FailureFilter,
    ) -> sqlx::Result<Vec<FailedMessage>>
    where
        E: Executor<'e, Database = Self>,
    {
        failures::list(executor, filter).await
    }

    async fn replay_failures<'a, A>(conn: A, filter: &FailureFilter) -> sqlx::Result<u64>
    where
        A: Acquire<'a, Database = Self> + Send,
    {
        failures::replay(conn, filter).await
    }

    async fn purge_failures<'e, E>(executor: E, filter: &FailureFilter) -> sqlx::Result<u64>
    where
        E: Executor<'e, Database = Self>,
    {
        failures::purge(executor, filter).await
    }

    async fn open_session(pool: &SqlitePool, config: &RelayConfig) -> Result<SqliteSession> {
        SqliteSession::open(pool, config).await
    }

    fn spawn_wakeup(
        _pool: &SqlitePool,
        _config: &RelayConfig,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        signal::spawn(wake, stop)
    }
}
