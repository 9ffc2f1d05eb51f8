//! A shared handle on the transaction a handler writes in (idempotency layer, durable inbox).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::{Database, Transaction};

use crate::database::DefaultDatabase;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{AsDelivery, Delivery};

/// The database transaction a handler runs in. Write through it and your writes commit together
/// with the middleware's own bookkeeping (the idempotency record, the inbox row), after your handler
/// returned `Ok`, or roll back with it.
///
/// The handler cannot commit or roll back: the middleware does, once the handler has answered.
/// Cloning the handle is cheap; all clones share one transaction. `DB` is the database
/// ([`TxDatabase`](crate::TxDatabase)); `PgTx`, `SqliteTx` and `MySqlTx` name them.
///
/// ```no_run
/// # async fn example(tx: courier_middleware::Tx<sqlx::Postgres>) -> Result<(), sqlx::Error> {
/// let mut conn = tx.lock().await;
/// sqlx::query("INSERT INTO payments (order_id) VALUES ($1)")
///     .bind(7_i64)
///     .execute(&mut *conn)
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct Tx<DB: Database = DefaultDatabase> {
    inner: Arc<Mutex<Option<Transaction<'static, DB>>>>,
}

/// The handler's transaction on Postgres.
///
/// ```no_run
/// # async fn example(tx: courier_middleware::PgTx) -> Result<(), sqlx::Error> {
/// let mut conn = tx.lock().await;
/// sqlx::query("UPDATE orders SET paid = true WHERE id = $1")
///     .bind(7_i64)
///     .execute(&mut *conn)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "postgres")]
pub type PgTx = Tx<sqlx::Postgres>;

/// The handler's transaction on SQLite (a `BEGIN IMMEDIATE` transaction: it holds the database's
/// write lock while the handler runs).
///
/// ```no_run
/// # async fn example(tx: courier_middleware::SqliteTx) -> Result<(), sqlx::Error> {
/// let mut conn = tx.lock().await;
/// sqlx::query("UPDATE orders SET paid = 1 WHERE id = $1")
///     .bind(7_i64)
///     .execute(&mut *conn)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "sqlite")]
pub type SqliteTx = Tx<sqlx::Sqlite>;

/// The handler's transaction on MySQL or MariaDB (a plain `BEGIN`, at the session's isolation
/// level). Return the errors of your statements (`?`): a deadlock (error 1213) has already rolled
/// the whole transaction back, see [`TxDatabase`](crate::TxDatabase).
///
/// ```no_run
/// # async fn example(tx: courier_middleware::MySqlTx) -> Result<(), sqlx::Error> {
/// let mut conn = tx.lock().await;
/// sqlx::query("UPDATE orders SET paid = TRUE WHERE id = ?")
///     .bind(7_i64)
///     .execute(&mut *conn)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "mysql")]
pub type MySqlTx = Tx<sqlx::MySql>;

impl<DB: Database> Clone for Tx<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: Database> fmt::Debug for Tx<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("database", &DB::NAME)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> Tx<DB> {
    pub(crate) fn new(tx: Transaction<'static, DB>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Some(tx))),
        }
    }

    /// Exclusive access to the transaction's connection, to run statements on.
    ///
    /// ```no_run
    /// # async fn example(tx: courier_middleware::PgTx) -> Result<(), sqlx::Error> {
    /// let mut conn = tx.lock().await;
    /// sqlx::query("INSERT INTO payments (order_id) VALUES ($1)")
    ///     .bind(7_i64)
    ///     .execute(&mut *conn)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Using the guard after the middleware finished the transaction (a handle kept beyond the
    /// handler call) panics: those writes could not commit with anything.
    pub async fn lock(&self) -> TxGuard<DB> {
        TxGuard {
            guard: self.inner.clone().lock_owned().await,
        }
    }

    /// Takes the transaction out, for the middleware to commit or roll back.
    pub(crate) async fn take(&self) -> Option<Transaction<'static, DB>> {
        self.inner.lock().await.take()
    }
}

/// Exclusive access to a [`Tx`]'s connection; dereferences to the database's connection
/// (`PgConnection`, `SqliteConnection`, `MySqlConnection`), so `&mut *guard` is an sqlx executor.
///
/// ```no_run
/// # async fn example(tx: courier_middleware::PgTx) -> Result<(), sqlx::Error> {
/// let mut guard = tx.lock().await;
/// let conn: &mut sqlx::PgConnection = &mut guard;
/// sqlx::query("SELECT 1").execute(conn).await?;
/// # Ok(())
/// # }
/// ```
pub struct TxGuard<DB: Database = DefaultDatabase> {
    guard: OwnedMutexGuard<Option<Transaction<'static, DB>>>,
}

/// A [`TxGuard`] on Postgres; dereferences to `PgConnection`.
///
/// ```no_run
/// # async fn example(tx: courier_middleware::PgTx) {
/// let guard: courier_middleware::PgTxGuard = tx.lock().await;
/// # let _ = guard;
/// # }
/// ```
#[cfg(feature = "postgres")]
pub type PgTxGuard = TxGuard<sqlx::Postgres>;

/// A [`TxGuard`] on SQLite; dereferences to `SqliteConnection`.
///
/// ```no_run
/// # async fn example(tx: courier_middleware::SqliteTx) {
/// let guard: courier_middleware::SqliteTxGuard = tx.lock().await;
/// # let _ = guard;
/// # }
/// ```
#[cfg(feature = "sqlite")]
pub type SqliteTxGuard = TxGuard<sqlx::Sqlite>;

/// A [`TxGuard`] on MySQL; dereferences to `MySqlConnection`.
///
/// ```no_run
/// # async fn example(tx: courier_middleware::MySqlTx) {
/// let guard: courier_middleware::MySqlTxGuard = tx.lock().await;
/// # let _ = guard;
/// # }
/// ```
#[cfg(feature = "mysql")]
pub type MySqlTxGuard = TxGuard<sqlx::MySql>;

impl<DB: Database> fmt::Debug for TxGuard<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxGuard")
            .field("database", &DB::NAME)
            .finish_non_exhaustive()
    }
}

const FINISHED: &str = "the handler's transaction was already committed or rolled back: \
                        do not keep the Tx beyond the handler call";

impl<DB: Database> Deref for TxGuard<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.guard.as_ref().expect(FINISHED)
    }
}

impl<DB: Database> DerefMut for TxGuard<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.guard.as_mut().expect(FINISHED)
    }
}

/// What a transactional handler receives: the delivery and the transaction to write in.
///
/// Produced by the [`Idempotency`](crate::Idempotency) layer and the durable inbox worker.
/// `DB` is the database of the transaction, [`DefaultDatabase`](crate::DefaultDatabase) unless said otherwise.
///
/// # Not `Clone`, so no retry inside the transaction
///
/// A `TxDelivery` stands for one attempt in one transaction, and is deliberately not `Clone`.
/// A layer that calls its inner service more than once with clones of the request, such as
/// [`LocalRetryLayer`](crate::LocalRetryLayer), would otherwise retry inside the transaction:
/// the failed attempt's writes are not rolled back (there is no savepoint per attempt) and commit
/// together with the retry's, so a handler that wrote and then failed would have its effect
/// twice. Put local retries outside the transactional layer instead: each retry then runs in a
/// fresh transaction with a fresh idempotency record, and a failed attempt leaves nothing behind.
///
/// ```no_run
/// use courier_middleware::{IdempotencyLayer, LocalRetryLayer, TxDelivery};
/// use tower::ServiceBuilder;
///
/// # async fn example(pool: sqlx::PgPool) {
/// let handler = ServiceBuilder::new()
///     .layer(LocalRetryLayer::default()) // outside: one transaction per attempt
///     .layer(IdempotencyLayer::new(pool))
///     .service_fn(|_: TxDelivery| async { Ok::<_, tower::BoxError>(()) });
/// # let _ = handler;
/// # }
/// ```
///
/// Inside, the stack is no handler of deliveries: "the trait bound `TxDelivery: Clone` is not
/// satisfied".
///
/// ```compile_fail,E0277
/// use courier_middleware::{Delivery, IdempotencyLayer, LocalRetryLayer, TxDelivery};
/// use tower::ServiceBuilder;
///
/// fn consume(_handler: impl tower::Service<Delivery>) {}
///
/// # fn example(pool: sqlx::PgPool) {
/// let handler = ServiceBuilder::new()
///     .layer(IdempotencyLayer::new(pool))
///     .layer(LocalRetryLayer::default()) // inside: would retry in the same transaction
///     .service_fn(|_: TxDelivery| async { Ok::<_, tower::BoxError>(()) });
/// consume(handler);
/// # }
/// ```
///
/// The durable inbox retries a failed row itself, each attempt in its own transaction
/// ([`Inbox::backoff`](crate::Inbox::backoff)).
///
/// ```no_run
/// use courier_middleware::TxDelivery;
///
/// // `TxDelivery<sqlx::Sqlite>` with an SQLite store (feature `sqlite`).
/// let handler = tower::service_fn(|request: TxDelivery| async move {
///     let mut conn = request.tx().lock().await;
///     sqlx::query("INSERT INTO payments (message_id) VALUES ($1)")
///         .bind(request.delivery.message.id)
///         .execute(&mut *conn)
///         .await?;
///     Ok::<_, tower::BoxError>(())
/// });
/// # let _ = handler;
/// ```
pub struct TxDelivery<DB: Database = DefaultDatabase> {
    /// The delivery.
    pub delivery: Delivery,
    tx: Tx<DB>,
}

impl<DB: Database> TxDelivery<DB> {
    pub(crate) fn new(delivery: Delivery, tx: Tx<DB>) -> Self {
        Self { delivery, tx }
    }

    /// The transaction to write in.
    ///
    /// ```no_run
    /// # async fn example(request: courier_middleware::TxDelivery) {
    /// let conn = request.tx().lock().await;
    /// # let _ = conn;
    /// # }
    /// ```
    pub fn tx(&self) -> &Tx<DB> {
        &self.tx
    }
}

impl<DB: Database> fmt::Debug for TxDelivery<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxDelivery")
            .field("delivery", &self.delivery)
            .field("tx", &self.tx)
            .finish()
    }
}

impl<DB: Database> AsDelivery for TxDelivery<DB> {
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }
}
