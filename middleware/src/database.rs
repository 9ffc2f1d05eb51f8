//! The databases a handler's transaction can live in.

use std::future::Future;

use sqlx::{Pool, Transaction};

/// The database the transactional types use when none is named (`TxDelivery`, `Inbox`,
/// `IdempotencyLayer` ...): Postgres when the `postgres` feature is on, otherwise SQLite when
/// `sqlite` is, otherwise MySQL. So a SQLite-only or MySQL-only build writes `TxDelivery` as a
/// Postgres one does, and code that enables several names `TxDelivery<Sqlite>` or
/// `TxDelivery<MySql>` (or lets the pool decide: `IdempotencyLayer::new(pool)`).
#[cfg(feature = "postgres")]
pub type DefaultDatabase = sqlx::Postgres;
/// The database the transactional types use when none is named: SQLite, the only store enabled
/// besides perhaps MySQL.
#[cfg(all(not(feature = "postgres"), feature = "sqlite"))]
pub type DefaultDatabase = sqlx::Sqlite;
/// The database the transactional types use when none is named: MySQL, the only store enabled.
#[cfg(all(not(feature = "postgres"), not(feature = "sqlite")))]
pub type DefaultDatabase = sqlx::MySql;

/// A database the transactional middleware ([`Idempotency`](crate::Idempotency),
/// [`Inbox`](crate::Inbox)) can keep its records in, and so the database a handler's
/// [`Tx`](crate::Tx) is a transaction of.
///
/// Implemented for [`sqlx::Postgres`] (feature `postgres`, the default), [`sqlx::Sqlite`]
/// (feature `sqlite`) and [`sqlx::MySql`] (feature `mysql`: MySQL 8.0.1+ or MariaDB 10.6+, the
/// versions with `SKIP LOCKED`). It is sealed: the middleware's SQL for each database lives behind it, so no
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
///
/// On MySQL the handler's transaction is a plain `BEGIN` at the session's isolation level
/// (REPEATABLE READ unless you set another on the pool's connections). InnoDB ends a transaction
/// by itself when it breaks a deadlock (error 1213), and the connection then goes on in autocommit
/// mode: return such an error from the handler (`?` does), never swallow it. The middleware checks
/// before it commits that its transaction is still the one it began, and redelivers if it is not,
/// but statements a handler ran after swallowing the error were already committed one by one.
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

        /// Whether `error`, returned by the first statement of a transaction, rolled back the
        /// whole transaction, so that beginning it again and re-running that statement repeats
        /// nothing: MySQL's deadlock (1213), which InnoDB breaks by rolling back a victim, for
        /// example two deliveries of one key waiting on a third one's record when it rolls back.
        fn restartable(error: &sqlx::Error) -> bool {
            let _ = error;
            false
        }

        /// Begins a write transaction whose first statement records (`group`, `key`); `None`
        /// for a duplicate, with nothing left open. An error comes back after the rollback, for
        /// the caller to begin again if it is [`restartable`](Self::restartable). Postgres does it
        /// in one round trip; the others begin, then insert.
        fn begin_recorded_once(
            pool: &Pool<Self>,
            group: &str,
            key: &str,
        ) -> impl Future<Output = Result<Option<Transaction<'static, Self>>, sqlx::Error>> + Send
        {
            async move {
                let mut tx = Self::begin_write(pool).await?;
                match Self::idempotency_record(&mut tx, group, key).await {
                    Ok(true) => Ok(Some(tx)),
                    Ok(false) => {
                        tx.rollback().await?;
                        Ok(None)
                    }
                    Err(error) => {
                        let _ = tx.rollback().await;
                        Err(error)
                    }
                }
            }
        }

        /// Commits `tx` if it still holds the records of `keys`
        /// ([`idempotency_still_held`](IdempotencySql::idempotency_still_held)); `Ok(false)`,
        /// rolled back, when it does not. Postgres checks and commits in one round trip.
        fn commit_recorded(
            mut tx: Transaction<'static, Self>,
            keys: &[(String, String)],
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
            async move {
                if !Self::idempotency_still_held(&mut tx, keys).await? {
                    let _ = tx.rollback().await;
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }
        }
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

    fn begin_recorded_once(
        pool: &Pool<Self>,
        group: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<Transaction<'static, Self>>, sqlx::Error>> + Send {
        crate::idempotency::store::postgres::begin_recorded(pool, group, key)
    }

    fn commit_recorded(
        tx: Transaction<'static, Self>,
        keys: &[(String, String)],
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        // The transaction's own state tells, whatever the records.
        let _ = keys;
        crate::idempotency::store::postgres::commit_recorded(tx)
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

#[cfg(feature = "mysql")]
impl TxDatabase for sqlx::MySql {}

#[cfg(feature = "mysql")]
impl sealed::Dialect for sqlx::MySql {
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send {
        // The session's isolation level: the handler's own statements run at the level the
        // application chose. The record insert locks only in the records table (a fresh record:
        // its own row; a duplicate: the existing row and the gap before it, until the rollback
        // right after), so REPEATABLE READ adds no lock on the handler's tables.
        pool.begin()
    }

    fn restartable(error: &sqlx::Error) -> bool {
        crate::mysql::conflict::is_deadlock(error)
    }
}
