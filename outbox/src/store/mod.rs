//! The databases the outbox runs on, and what differs between them.
//!
//! Everything dialect-specific (the SQL of the writer and the failure table, how the relay claims
//! rows and wakes up) sits behind the sealed [`Store`] trait, implemented for [`sqlx::Postgres`]
//! (feature `postgres`), [`sqlx::Sqlite`] (feature `sqlite`) and [`sqlx::MySql`] (feature `mysql`,
//! MySQL 8 and MariaDB 10.6+). The public API is the same on all three: the database is whatever
//! the pool or executor you pass belongs to.

#[cfg(any(feature = "sqlite", feature = "mysql"))]
mod leased;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(test)]
mod send_check;
mod signal;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;

use futures::future::BoxFuture;
use std::sync::Arc;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Acquire, Executor, Pool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::relay::{RelayConfig, Session};
use crate::{FailedMessage, FailureFilter, Message, ReplayReport, Result};

#[cfg(not(any(feature = "postgres", feature = "sqlite", feature = "mysql")))]
compile_error!(
    "courier-outbox needs a store: enable one or more of the features `postgres`, `sqlite`, `mysql`"
);

/// A database the outbox can live in: [`sqlx::Postgres`], [`sqlx::Sqlite`] or [`sqlx::MySql`].
///
/// You never implement or call it: it is the bound that lets [`Outbox`](crate::Outbox),
/// [`Relay`](crate::Relay) and [`Failures`](crate::Failures) take a Postgres, SQLite or MySQL pool
/// or executor with the same methods.
///
/// ```no_run
/// use courier_outbox::{Message, Outbox, Store};
///
/// // Works on either database.
/// async fn place_order<DB: Store>(pool: &sqlx::Pool<DB>) -> Result<(), courier_outbox::Error>
/// where
///     for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
/// {
///     let mut tx = pool.begin().await?;
///     Outbox::new().enqueue(&mut *tx, &Message::new("orders.created", "{}")).await?;
///     tx.commit().await?;
///     Ok(())
/// }
/// ```
pub trait Store: sealed::Dialect {}

impl<DB: sealed::Dialect> Store for DB {}

/// Runs the migrations of `pool`'s database: [`MIGRATOR`](crate::MIGRATOR) on Postgres,
/// [`SQLITE_MIGRATOR`](crate::SQLITE_MIGRATOR) on SQLite, [`MYSQL_MIGRATOR`](crate::MYSQL_MIGRATOR)
/// on MySQL / MariaDB. Safe to run repeatedly and,
/// on Postgres and MySQL, concurrently (sqlx takes an advisory lock).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::SqlitePool::connect("sqlite://orders.db?mode=rwc").await?;
/// courier_outbox::migrate(&pool).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// The migration error, naming the migration that failed.
pub async fn migrate<DB: Store>(pool: &Pool<DB>) -> Result<(), MigrateError>
where
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
{
    DB::migrator().run(pool).await
}

pub(crate) mod sealed {
    use super::*;

    /// The per-database half of [`Store`](super::Store); private, so nobody else implements it.
    pub trait Dialect: sqlx::Database {
        /// The session a relay opens on this store.
        type Session: Session;

        /// The embedded migrations of this dialect.
        fn migrator() -> &'static Migrator;

        /// Maps "the outbox table does not exist" to [`Error::NotMigrated`](crate::Error).
        fn map_error(error: sqlx::Error) -> crate::Error;

        // The executor methods return boxed futures, as sqlx's own `Executor` does: an opaque
        // future generic over the executor's lifetime cannot be proven `Send` inside the caller's
        // `async fn` (rust-lang/rust#100013), and the writer runs inside web handlers that must be.

        /// Inserts one message.
        fn insert_one<'a, 'e: 'a, E>(
            executor: E,
            message: &'a Message,
        ) -> BoxFuture<'a, sqlx::Result<()>>
        where
            E: Executor<'e, Database = Self> + 'a;

        /// Inserts all `messages` in one statement, in order; returns how many were written.
        fn insert_many<'a, 'e: 'a, E>(
            executor: E,
            messages: &'a [Message],
        ) -> BoxFuture<'a, sqlx::Result<u64>>
        where
            E: Executor<'e, Database = Self> + 'a;

        /// Called after a successful insert: wakes the relays of this process (`signal.rs`).
        fn enqueued() {}

        /// The failures matching `filter`, oldest first.
        fn list_failures<'a, 'e: 'a, E>(
            executor: E,
            filter: &'a FailureFilter,
        ) -> BoxFuture<'a, sqlx::Result<Vec<FailedMessage>>>
        where
            E: Executor<'e, Database = Self> + 'a;

        /// Moves the failures matching `filter` back into the outbox, except those whose id is
        /// already there (kept, and reported as conflicts).
        fn replay_failures<'a, 'c: 'a, A>(
            conn: A,
            filter: &'a FailureFilter,
        ) -> BoxFuture<'a, sqlx::Result<ReplayReport>>
        where
            A: Acquire<'c, Database = Self> + Send + 'a;

        /// Deletes the failures matching `filter`; returns how many.
        fn purge_failures<'a, 'e: 'a, E>(
            executor: E,
            filter: &'a FailureFilter,
        ) -> BoxFuture<'a, sqlx::Result<u64>>
        where
            E: Executor<'e, Database = Self> + 'a;

        /// Opens a relay session: checks the tables exist and takes this relay's share of work.
        fn open_session(
            pool: &Pool<Self>,
            config: &RelayConfig,
        ) -> impl Future<Output = Result<Self::Session>> + Send;

        /// Spawns the task that notifies `wake` when new messages may be due.
        fn spawn_wakeup(
            pool: &Pool<Self>,
            config: &RelayConfig,
            wake: Arc<Notify>,
            stop: CancellationToken,
        ) -> JoinHandle<()>;
    }
}
