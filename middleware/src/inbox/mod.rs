//! The durable inbox (safeguard C4): store the delivery, ack at once, process from the table.

pub(crate) mod future;
pub(crate) mod sql;
mod store;
pub(crate) mod wakeup;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::{Backoff, Message};
use sqlx::{Database, Executor, Pool};

use crate::database::DefaultDatabase;
use uuid::Uuid;

use crate::{Delivery, TxDatabase};
pub use store::InboxStore;
pub use worker::InboxWorker;

/// "Save to the local database, ack at once, process later" for long or bursty work.
///
/// - [`Inbox::store`] is a handler for the [`Consumer`](crate::Consumer) runtime: it writes the
///   delivery to `courier_inbox.messages` (`courier_inbox_messages` on SQLite) and answers `Ok`, so the runtime acks as soon as the row
///   is committed. A redelivery of a message already stored (or dead-lettered) is not stored again.
/// - [`Inbox::worker`] processes stored rows with a transactional handler
///   (`tower::Service<TxDelivery<DB>>`): each row is claimed with `FOR UPDATE SKIP LOCKED`, the handler
///   runs in the transaction that marks the row done, so its writes and the "done" mark commit
///   together. A failure rolls back and retries the row later with backoff; after `max_attempts`
///   (or a [`Reject`](crate::Reject)) the row moves to `courier_inbox.dead_letters`.
/// - A worker that dies mid-handler loses nothing: its transaction rolls back, and the row is taken
///   again once its lease ends (attempts are counted at claim time, so a row that keeps crashing
///   workers is dead-lettered too).
/// - A claim is a lease, and only its holder records an outcome. The claim counts an attempt and
///   hides the row until the lease ends; marking the row done, scheduling its retry and
///   dead-lettering it each check, in the same statement (or SQLite write transaction), that the
///   row still carries that claim's attempt count and lease end. An attempt that outlived its
///   lease, and whose row another worker claimed meanwhile (and maybe processed), records
///   nothing: it cannot dead-letter or reschedule a row that is no longer its own. Its handler's
///   writes roll back, and it logs a warning and counts `courier_inbox_leases_lost_total`.
///
/// Rows of one group are processed oldest first, but with several workers not strictly in order.
///
/// `DB` is the database ([`TxDatabase`]): Postgres by default, SQLite with feature `sqlite`
/// (`Inbox::new(sqlite_pool)`). On SQLite the claim is a single `UPDATE` (SQLite has one writer, so
/// there is nothing to skip), the handler's transaction is `BEGIN IMMEDIATE` and holds the write
/// lock while it runs, so handlers run one at a time per database file whatever the
/// [`concurrency`](Self::concurrency); and idle workers are woken in-process by
/// [`insert`](Self::insert) (and [`store`](Self::store)) on the same database file, rows written by
/// other processes are found by polling ([`poll_interval`](Self::poll_interval)).
///
/// # Examples
///
/// ```no_run
/// use courier_middleware::{Consumer, Inbox, MemorySource, TxDelivery};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(pool: sqlx::PgPool, source: MemorySource) {
/// let inbox = Inbox::new(pool).max_attempts(5);
/// let shutdown = CancellationToken::new();
/// // Ack as soon as the delivery is stored...
/// let consumer = Consumer::builder(source, inbox.store()).build();
/// tokio::spawn(consumer.run(shutdown.clone()));
/// // ... and do the long work from the table.
/// let worker = inbox.worker("billing", tower::service_fn(|request: TxDelivery| async move {
///     let mut conn = request.tx().lock().await;
///     sqlx::query("UPDATE invoices SET sent = true WHERE order_id = $1")
///         .bind(request.delivery.message.key.clone())
///         .execute(&mut *conn)
///         .await?;
///     Ok::<_, tower::BoxError>(())
/// }));
/// worker.run(shutdown).await;
/// # }
/// ```
pub struct Inbox<DB: Database = DefaultDatabase> {
    pool: Pool<DB>,
    config: Arc<InboxConfig>,
}

impl<DB: Database> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            config: self.config.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("database", &DB::NAME)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct InboxConfig {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) concurrency: usize,
}

/// What [`Inbox::store`] did with a delivery. Both variants ack.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// use courier_middleware::{Delivery, Inbox, Stored};
/// use courier_core::Message;
///
/// let delivery = Delivery::new(Message::new("orders", "o-1"), "billing");
/// if Inbox::new(pool.clone()).insert(&pool, &delivery).await? == Stored::Duplicate {
///     println!("already in the inbox");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new row was written.
    New,
    /// The message was already in the inbox (or its dead letters).
    Duplicate,
}

/// An inbox row that failed its last attempt.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// for dead in courier_middleware::Inbox::new(pool).dead_letters("billing").await? {
///     println!("{} at {}: {}", dead.message.id, dead.failed_at, dead.last_error);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxDeadLetter {
    /// The consumer group.
    pub group: String,
    /// The message as it was delivered.
    pub message: Message,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: String,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
}

impl<DB: Database> Inbox<DB> {
    /// An inbox in `pool`'s database (schema `courier_inbox`, created by `courier_outbox::MIGRATOR`,
    /// or on SQLite tables `courier_inbox_*`, created by `courier_outbox::SQLITE_MIGRATOR`):
    /// 16 attempts, backoff 1 s doubling to 5 min, a 30 s lease, 1 s idle polling, one worker loop.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), sqlx::Error> {
    /// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
    /// let inbox = courier_middleware::Inbox::new(pool);
    /// # let _ = inbox;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            config: Arc::new(InboxConfig {
                max_attempts: 16,
                backoff: Backoff::default(),
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_secs(1),
                concurrency: 1,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut InboxConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Attempts before a row is dead-lettered (at least 1).
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let inbox = courier_middleware::Inbox::new(pool).max_attempts(5);
    /// # let _ = inbox;
    /// # }
    /// ```
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config_mut().max_attempts = n.max(1);
        self
    }

    /// Delay between attempts of one row.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// use std::time::Duration;
    /// use courier_core::Backoff;
    ///
    /// let backoff = Backoff { base: Duration::from_secs(2), ..Backoff::default() };
    /// let inbox = courier_middleware::Inbox::new(pool).backoff(backoff);
    /// # let _ = inbox;
    /// # }
    /// ```
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config_mut().backoff = backoff;
        self
    }

    /// How long a claimed row is hidden from other workers before a worker that died with it is
    /// presumed gone and the row is taken again. A row being processed stays locked either way,
    /// but once its handler's transaction ends (the handler failed, its connection was lost) a
    /// row past its lease may be claimed by another worker, and the late attempt then records
    /// nothing. Make it longer than your handlers take.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let inbox = courier_middleware::Inbox::new(pool).lease(std::time::Duration::from_secs(120));
    /// # let _ = inbox;
    /// # }
    /// ```
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config_mut().lease = lease;
        self
    }

    /// How often an idle worker looks for due rows when no notification woke it (retries that
    /// become due, a lost notification connection).
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let inbox = courier_middleware::Inbox::new(pool).poll_interval(std::time::Duration::from_secs(5));
    /// # let _ = inbox;
    /// # }
    /// ```
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.config_mut().poll_interval = every;
        self
    }

    /// Rows a worker processes at the same time (at least 1), each on its own connection.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let inbox = courier_middleware::Inbox::new(pool).concurrency(4);
    /// # let _ = inbox;
    /// # }
    /// ```
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config_mut().concurrency = n.max(1);
        self
    }

    /// A handler that stores each delivery and answers `Ok` (so the runtime acks at once).
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool, source: courier_middleware::MemorySource) {
    /// use courier_middleware::{Consumer, Inbox};
    ///
    /// let consumer = Consumer::builder(source, Inbox::new(pool).store()).build();
    /// # let _ = consumer;
    /// # }
    /// ```
    pub fn store(&self) -> InboxStore<DB> {
        InboxStore {
            inbox: self.clone(),
        }
    }

    /// A worker processing `group`'s rows with `handler`.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// use courier_middleware::{Inbox, TxDelivery};
    ///
    /// let handler = tower::service_fn(|_: TxDelivery| async { Ok::<_, tower::BoxError>(()) });
    /// let worker = Inbox::new(pool).worker("billing", handler);
    /// # let _ = worker;
    /// # }
    /// ```
    pub fn worker<H>(&self, group: impl Into<String>, handler: H) -> InboxWorker<H, DB> {
        InboxWorker::new(self.clone(), group.into(), handler)
    }
}

impl<DB: TxDatabase> Inbox<DB> {
    /// Writes `delivery` to the inbox with `executor` (a pool, or your own transaction).
    ///
    /// On SQLite it also wakes this process's idle workers of the group on the same database
    /// file; a row written in your own transaction is claimed once that transaction ends (its
    /// write lock holds the woken worker back until then).
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// use courier_middleware::{Delivery, Inbox, Stored};
    /// use courier_core::Message;
    ///
    /// let inbox = Inbox::new(pool.clone());
    /// let delivery = Delivery::new(Message::new("orders", "o-1"), "billing");
    /// let mut tx = pool.begin().await?;
    /// let stored = inbox.insert(&mut *tx, &delivery).await?;
    /// tx.commit().await?;
    /// assert_eq!(stored, Stored::New);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The database error; nothing is stored then.
    pub async fn insert<'e, E: Executor<'e, Database = DB>>(
        &self,
        executor: E,
        delivery: &Delivery,
    ) -> Result<Stored, sqlx::Error> {
        let stored = DB::inbox_insert(executor, delivery).await?;
        if stored == Stored::New {
            DB::inbox_stored(&self.pool, &delivery.group);
        }
        Ok(stored)
    }

    /// Rows of `group` not processed yet.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let waiting = courier_middleware::Inbox::new(pool).pending("billing").await?;
    /// println!("{waiting} rows to process");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn pending(&self, group: &str) -> Result<i64, sqlx::Error> {
        DB::inbox_pending(&self.pool, group).await
    }

    /// `group`'s dead letters, oldest first.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// for dead in courier_middleware::Inbox::new(pool).dead_letters("billing").await? {
    ///     println!("{} failed {} times: {}", dead.message.id, dead.attempts, dead.last_error);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<InboxDeadLetter>, sqlx::Error> {
        DB::inbox_dead_letters(&self.pool, group).await
    }

    /// Moves dead letters of `group` back into the inbox with zero attempts, due at once; returns
    /// how many moved.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let inbox = courier_middleware::Inbox::new(pool);
    /// let ids: Vec<_> = inbox.dead_letters("billing").await?.iter().map(|d| d.message.id).collect();
    /// inbox.replay("billing", &ids).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The database error; nothing moves then.
    pub async fn replay(&self, group: &str, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
        DB::inbox_replay(&self.pool, group, ids).await
    }

    /// Deletes processed rows older than `age` (they guard against redeliveries until then) and
    /// returns how many went.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let week = std::time::Duration::from_secs(7 * 24 * 3600);
    /// let purged = courier_middleware::Inbox::new(pool).purge_done(week).await?;
    /// # let _ = purged;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn purge_done(&self, age: Duration) -> Result<u64, sqlx::Error> {
        DB::inbox_purge_done(&self.pool, age).await
    }
}
