//! The durable inbox (safeguard C4): store the delivery, ack at once, process from the table.

pub(crate) mod future;
mod sql;
mod worker;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_outbox::{Backoff, Message};
use sqlx::{PgExecutor, PgPool};
use tower::{BoxError, Service};
use uuid::Uuid;

use crate::Delivery;
use future::ResponseFuture;
pub use worker::InboxWorker;

/// "Save to the local database, ack at once, process later" for long or bursty work.
///
/// - [`Inbox::store`] is a handler for the [`Consumer`](crate::Consumer) runtime: it writes the
///   delivery to `courier_inbox.messages` and answers `Ok`, so the runtime acks as soon as the row
///   is committed. A redelivery of a message already stored (or dead-lettered) is not stored again.
/// - [`Inbox::worker`] processes stored rows with a transactional handler
///   (`tower::Service<TxDelivery>`): each row is claimed with `FOR UPDATE SKIP LOCKED`, the handler
///   runs in the transaction that marks the row done, so its writes and the "done" mark commit
///   together. A failure rolls back and retries the row later with backoff; after `max_attempts`
///   (or a [`Reject`](crate::Reject)) the row moves to `courier_inbox.dead_letters`.
/// - A worker that dies mid-handler loses nothing: its transaction rolls back, and the row is taken
///   again once its lease ends (attempts are counted at claim time, so a row that keeps crashing
///   workers is dead-lettered too).
///
/// Rows of one group are processed oldest first, but with several workers not strictly in order.
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
#[derive(Debug, Clone)]
pub struct Inbox {
    pool: PgPool,
    config: Arc<InboxConfig>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new row was written.
    New,
    /// The message was already in the inbox (or its dead letters).
    Duplicate,
}

/// An inbox row that failed its last attempt.
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

impl Inbox {
    /// An inbox in `pool`'s database (schema `courier_inbox`, created by `courier_outbox::MIGRATOR`):
    /// 16 attempts, backoff 1 s doubling to 5 min, a 30 s lease, 1 s idle polling, one worker loop.
    pub fn new(pool: PgPool) -> Self {
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
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config_mut().max_attempts = n.max(1);
        self
    }

    /// Delay between attempts of one row.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config_mut().backoff = backoff;
        self
    }

    /// How long a claimed row is hidden from other workers before a worker that died with it is
    /// presumed gone and the row is taken again. A row being processed stays locked either way.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config_mut().lease = lease;
        self
    }

    /// How often an idle worker looks for due rows when no notification woke it (retries that
    /// become due, a lost notification connection).
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.config_mut().poll_interval = every;
        self
    }

    /// Rows a worker processes at the same time (at least 1), each on its own connection.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config_mut().concurrency = n.max(1);
        self
    }

    /// Writes `delivery` to the inbox with `executor` (a pool, or your own transaction).
    ///
    /// # Errors
    ///
    /// The database error; nothing is stored then.
    pub async fn insert<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        delivery: &Delivery,
    ) -> Result<Stored, sqlx::Error> {
        sql::insert(executor, delivery).await
    }

    /// A handler that stores each delivery and answers `Ok` (so the runtime acks at once).
    pub fn store(&self) -> InboxStore {
        InboxStore {
            inbox: self.clone(),
        }
    }

    /// A worker processing `group`'s rows with `handler`.
    pub fn worker<H>(&self, group: impl Into<String>, handler: H) -> InboxWorker<H> {
        InboxWorker::new(self.clone(), group.into(), handler)
    }

    /// Rows of `group` not processed yet.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn pending(&self, group: &str) -> Result<i64, sqlx::Error> {
        sql::pending(&self.pool, group).await
    }

    /// `group`'s dead letters, oldest first.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<InboxDeadLetter>, sqlx::Error> {
        sql::dead_letters(&self.pool, group).await
    }

    /// Moves dead letters of `group` back into the inbox with zero attempts, due at once; returns
    /// how many moved.
    ///
    /// # Errors
    ///
    /// The database error; nothing moves then.
    pub async fn replay(&self, group: &str, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
        sql::replay(&self.pool, group, ids).await
    }

    /// Deletes processed rows older than `age` (they guard against redeliveries until then) and
    /// returns how many went.
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn purge_done(&self, age: Duration) -> Result<u64, sqlx::Error> {
        sql::purge_done(&self.pool, age).await
    }
}

/// The handler returned by [`Inbox::store`]: stores each delivery and answers `Ok`.
#[derive(Debug, Clone)]
pub struct InboxStore {
    inbox: Inbox,
}

impl InboxStore {
    /// The inbox it writes to.
    pub fn get_ref(&self) -> &Inbox {
        &self.inbox
    }
}

impl Service<Delivery> for InboxStore {
    type Response = Stored;
    type Error = BoxError;
    type Future = ResponseFuture<Stored>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let inbox = self.inbox.clone();
        ResponseFuture::new(Box::pin(async move {
            Ok(sql::insert(&inbox.pool, &delivery).await?)
        }))
    }
}
