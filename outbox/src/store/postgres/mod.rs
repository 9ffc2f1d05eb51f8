//! The Postgres store: `SKIP LOCKED` claims in the publishing transaction, `LISTEN/NOTIFY`
//! wake-ups, key partitions owned through advisory locks, server-side bounds on a silent relay
//! connection. Tables in schema `outbox`.

mod claim;
mod failures;
mod housekeeping;
mod liveness;
mod partitions;
mod session;
mod wakeup;
mod writer;

use std::sync::Arc;

use futures::future::BoxFuture;

use sqlx::migrate::Migrator;
use sqlx::{Acquire, Executor, PgPool, Postgres};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sealed::Dialect;
use crate::relay::RelayConfig;
use crate::{Error, FailedMessage, FailureFilter, Message, ReplayReport, Result};
#[allow(unreachable_pub)] // named by the sealed `Store` trait only
pub use session::PgSession;

/// Wakes this process's Postgres relays on every insert (`super::signal`), before NOTIFY could.
pub(super) static SIGNAL: super::signal::Signal = super::signal::Signal::new();

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

    async fn open_session(pool: &PgPool, config: &RelayConfig) -> Result<PgSession> {
        PgSession::open(pool, config).await
    }

    fn spawn_wakeup(
        pool: &PgPool,
        config: &RelayConfig,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let inserts = SIGNAL.spawn(wake.clone(), stop.clone());
        let listener = wakeup::spawn(pool.clone(), config.name.clone(), wake, stop);
        tokio::spawn(async move {
            let _ = tokio::join!(inserts, listener);
        })
    }
}
