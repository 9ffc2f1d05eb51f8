//! The Postgres store: `SKIP LOCKED` claims in the publishing transaction, `LISTEN/NOTIFY`
//! wake-ups, key partitions owned through advisory locks. Tables in schema `outbox`.

mod claim;
mod failures;
mod housekeeping;
mod partitions;
mod session;
mod wakeup;
mod writer;

use std::sync::Arc;

use sqlx::migrate::Migrator;
use sqlx::{Acquire, Executor, PgPool, Postgres};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sealed::Dialect;
use crate::relay::RelayConfig;
use crate::{Error, FailedMessage, FailureFilter, Message, Result};
#[allow(unreachable_pub)] // named by the sealed `Store` trait only
pub use session::PgSession;

impl Dialect for Postgres {
    type Session = PgSession;

    fn migrator() -> &'static Migrator {
        &crate::MIGRATOR
    }

    fn map_error(error: sqlx::Error) -> Error {
        if let sqlx::Error::Database(db) = &error {
            // 42P01 undefined_table, 3F000 invalid_schema_name
            if matches!(db.code().as_deref(), Some("42P01" | "3F000"))
                && db.message().contains("outbox")
            {
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

    async fn open_session(pool: &PgPool, config: &RelayConfig) -> Result<PgSession> {
        PgSession::open(pool, config).await
    }

    fn spawn_wakeup(
        pool: &PgPool,
        config: &RelayConfig,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        wakeup::spawn(pool.clone(), config.name.clone(), wake, stop)
    }
}
