//! The SQLite store: rows leased in short IMMEDIATE transactions, in-process wake-ups plus polling.
//! Tables `outbox_messages` and `outbox_failures` (SQLite has no schemas).

mod claim;
mod failures;
mod housekeeping;
mod session;
mod time;
mod writer;

use std::sync::Arc;

use futures::future::BoxFuture;

use sqlx::migrate::Migrator;
use sqlx::{Acquire, Executor, Sqlite, SqlitePool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sealed::Dialect;
use crate::relay::RelayConfig;
use crate::{Error, FailedMessage, FailureFilter, Message, ReplayReport, Result};
#[allow(unreachable_pub)] // named by the sealed `Store` trait only
pub use session::SqliteSession;

/// Wakes this process's relays of this store on every insert (`super::signal`).
pub(super) static SIGNAL: super::signal::Signal = super::signal::Signal::new();

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

    async fn open_session(pool: &SqlitePool, config: &RelayConfig) -> Result<SqliteSession> {
        SqliteSession::open(pool, config).await
    }

    fn spawn_wakeup(
        _pool: &SqlitePool,
        _config: &RelayConfig,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        SIGNAL.spawn(wake, stop)
    }
}
