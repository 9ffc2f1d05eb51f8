//! The databases a handler's transaction can live in.

use std::future::Future;

use sqlx::{Pool, Transaction};

/// The database the transactional types use when none is named (`TxDelivery`, `Inbox`,
/// `IdempotencyLayer` ...): Postgres when the `postgres` feature is on, otherwise SQLite. So a
/// SQLite-only build writes `TxDelivery` as a Postgres one does, and code that enables both names
/// `TxDelivery<Sqlite>` (or lets the pool decide: `IdempotencyLayer::new(pool)`).
#[cfg(feature = "postgres")]
pub type DefaultDatabase = sqlx::Postgres;
/// The database the transactional types use when none is named: SQLite, the only store enabled.
#[cfg(not(feature = "postgres"))]
pub type DefaultDatabase = sqlx::Sqlite;

/// A database the transactional middleware ([`Idempotency`](crate::Idempotency),
/// [`Inbox`](crate::Inbox)) can keep its records in, and so the database a handler's
/// [`Tx`](crate::Tx) is a transaction of.
///
/// Implemented for [`sqlx::Postgres`] (feature `postgres`, the default) and [`sqlx::Sqlite`]
/// (feature `sqlite`). It is sealed: the middleware's SQL for each database lives behind it, so no
/// other crate can implement it. Write code that works with either by being generic over it:
///
/// ```no_run
/// use courier_middleware::{Idempotency, IdempotencyLayer, TxDatabase};
///
/// // The same consumer setup over either store.
/// fn idempotent<DB: TxDatabase, S>(pool: sqlx::Pool<DB>, handler: S) -> Idempotency<S, DB> {
///     Idempotency::new(handler, &IdempotencyLayer::new(pool))
/// }
///
/// # async fn example() -> Result<(), sqlx::Error> {
/// # let handler = tower::service_fn(|_: courier_middleware::TxDelivery| async { Ok::<_, tower::BoxError>(()) });
/// let postgres = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// let service = idempotent(postgres, handler);
/// # let _ = service;
/// # Ok(())
/// # }
/// ```
///
/// On SQLite every transaction the middleware opens for a handler is a write transaction
/// (`BEGIN IMMEDIATE`) held while the handler runs, and SQLite has one writer per database file:
/// handlers run one at a time per database file, and a second one waits for the first (up to the
/// connection's busy timeout, 5 s by default in sqlx, after which its delivery fails and is
/// redelivered). Keep handlers short there, and write only through the [`Tx`](crate::Tx): a handler
/// that writes through the pool instead waits on its own transaction's lock.
pub trait TxDatabase: sqlx::Database + sealed::Dialect {}

pub(crate) mod sealed {
    use super::{Future, Pool, Transaction};
    use crate::idempotency::store::IdempotencySql;
    use crate::inbox::sql::InboxSql;
    use crate::inbox::wakeup::InboxWakeups;

    /// The middleware's SQL for one database. Public in a private module: nameable in
    /// [`TxDatabase`](super::TxDatabase)'s bounds, implementable only here.
    pub trait Dialect: IdempotencySql + InboxSql + InboxWakeups {
        /// Begins a transaction that will write: Postgres `BEGIN`; SQLite `BEGIN IMMEDIATE`, which
        /// takes the write lock now (waiting for it with the busy timeout), because a deferred
        /// transaction that upgrades to a write later fails with `SQLITE_BUSY` instead of waiting.
        fn begin_write(
            pool: &Pool<Self>,
        ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;
    }
}

#[cfg(feature = "postgres")]
impl TxDatabase for sqlx::Postgres {}

#[cfg(feature = "postgres")]
impl sealed::Dialect for sqlx::Postgres {
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send {
        pool.begin()
    }
}

#[cfg(feature = "sqlite")]
impl TxDatabase for sqlx::Sqlite {}

#[cfg(feature = "sqlite")]
impl sealed::Dialect for sqlx::Sqlite {
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send {
        pool.begin_with("BEGIN IMMEDIATE")
    }
}
