//! Idempotent consumption on Postgres or SQLite (safeguard C7).
//!
//! The window counts from a message's creation, and a message older than the window that finds
//! no record is dead-lettered, not handled: see "The window" on [`Idempotency`], which is where
//! the contract is documented for users.

mod batch;
mod begin;
pub(crate) mod future;
mod late;
mod layer;
pub(crate) mod store;

pub use batch::{BatchedIdempotency, BatchedIdempotencyLayer};
pub use late::LateDelivery;
pub use layer::IdempotencyLayer;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sqlx::{Database, Pool};

use crate::database::DefaultDatabase;
use tower::{BoxError, Service};

use crate::{Delivery, Tx, TxDatabase, TxDelivery};
use future::ResponseFuture;

/// Default deduplication window: 14 days, counted from a message's creation. Longer than
/// broker-lite's (and RocketMQ's) 72 hours of retention plus a week in the outbox failure table
/// before a replay; see [`Idempotency`](Idempotency#sizing-the-window) for sizing it. A message older
/// than the window is dead-lettered ([`LateDelivery`]) unless its record shows it a duplicate.
///
/// ```
/// assert_eq!(courier_middleware::DEFAULT_IDEMPOTENCY_WINDOW.as_secs(), 14 * 24 * 3600);
/// ```
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(14 * 24 * 3600);

/// What the idempotency layer did with a delivery. Both variants ack.
///
/// ```
/// use courier_middleware::Handled;
///
/// assert!(Handled::<()>::Duplicate.is_duplicate());
/// assert!(!Handled::Processed(7).is_duplicate());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled<R> {
    /// The handler ran and its transaction, with the idempotency record, committed.
    Processed(R),
    /// The record already existed: the handler did not run.
    Duplicate,
}

impl<R> Handled<R> {
    /// Whether this delivery was a duplicate.
    ///
    /// ```
    /// assert!(courier_middleware::Handled::<()>::Duplicate.is_duplicate());
    /// ```
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate)
    }
}

/// Which value identifies "the same message" for deduplication.
///
/// ```
/// use courier_middleware::IdempotencyKey;
///
/// assert_eq!(IdempotencyKey::default(), IdempotencyKey::MessageId);
/// let by_header = IdempotencyKey::Header("idempotency-key".into());
/// # let _ = by_header;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdempotencyKey {
    /// The message id (a producer that retries keeps the id, so its retries are deduplicated).
    #[default]
    MessageId,
    /// The value of this header, falling back to the message id when a message does not carry it.
    /// For producers that send the same business event under several ids.
    Header(String),
}

impl IdempotencyKey {
    fn of(&self, delivery: &Delivery) -> String {
        match self {
            Self::Header(name) => match delivery.message.headers.get(name) {
                Some(value) => format!("h:{value}"),
                None => delivery.message.id.to_string(),
            },
            Self::MessageId => delivery.message.id.to_string(),
        }
    }
}

struct Config<DB: Database> {
    pool: Pool<DB>,
    key: IdempotencyKey,
    window: Duration,
}

impl<DB: Database> Clone for Config<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            key: self.key.clone(),
            window: self.window,
        }
    }
}

impl<DB: Database> std::fmt::Debug for Config<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database", &DB::NAME)
            .field("key", &self.key)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Runs each handler at most once per (consumer group, message) with its effects.
///
/// For each delivery, in one transaction of the database `DB` (Postgres unless said otherwise; see
/// [`TxDatabase`]):
///
/// 1. `INSERT INTO courier_inbox.processed (group, key) … ON CONFLICT DO NOTHING`
///    (`courier_inbox_processed` on SQLite);
/// 2. if the row already existed, roll back and answer [`Handled::Duplicate`] (the runtime acks,
///    the handler does not run);
/// 3. otherwise call the handler with a [`TxDelivery`], whose [`Tx`] is that transaction: the
///    handler's own writes go in it;
/// 4. on `Ok`, commit and answer [`Handled::Processed`]; the runtime acks after the commit. On an
///    error (or a panic, or a timeout dropping the future), roll back: the record goes with the
///    handler's writes, and the redelivery runs the handler again.
///
/// Before the commit the layer checks that the transaction is still alive (a handler that
/// swallowed a failed statement, or ended the transaction itself, would otherwise be acked over a
/// rolled-back transaction). On Postgres the layer takes two round trips on top of the handler's
/// own, as many as a handler that begins and commits its own transaction: the record insert
/// travels with the `BEGIN` (`INSERT …; BEGIN`, a duplicate being the key's unique violation), and
/// the check with the `COMMIT` (`SAVEPOINT …; COMMIT; BEGIN`: a savepoint fails outside a live
/// transaction; the trailing empty transaction is there for sqlx's own rollback, sent when the
/// connection goes back to the pool).
///
/// Two concurrent deliveries of one message give one effect. On Postgres the second insert waits on
/// the first transaction's row lock, then sees the row (the first committed) or takes over (it
/// rolled back). On SQLite the transaction is `BEGIN IMMEDIATE`: it takes the database's write lock
/// before the record is looked at, so the second delivery's transaction begins only after the first
/// ended, with the same outcome; handlers therefore run one at a time per database file.
/// The key is the message id or a declared header ([`IdempotencyKey`]); records expire after a
/// window ([`purge_expired`](Self::purge_expired)), and a message older than the window that
/// finds no record is dead-lettered, not handled ([`LateDelivery`]; see the module docs).
///
/// Only writes made through the [`Tx`] are covered. A side effect outside the database (an
/// HTTP call) may still repeat if the commit fails after it.
///
/// Put a [`LocalRetryLayer`](crate::LocalRetryLayer) outside this layer, never inside: each retry
/// then runs in a fresh transaction. Inside, a retry would run in the failed attempt's
/// transaction and commit that attempt's writes with its own; [`TxDelivery`] is not `Clone`, so
/// that stack does not compile (see there).
///
/// # The window, and what happens past it
///
/// A record ("this group handled this key") is what makes a second delivery a duplicate, and
/// records are purged after a window. A message can come back long after its first delivery,
/// though: the broker redelivers it for its redelivery horizon and keeps it for its retention
/// (broker-lite: 72 hours), a dead-lettered message can be redriven later, and an outbox
/// failure-table replay republishes, days or weeks later, a message the broker may have taken
/// already (a publish that timed out but landed). A replayed or redriven message keeps its id and
/// its `created_at`.
///
/// So the window counts from the message's creation ([`Message::created_at`], or its due time
/// when the delivery carries a later one), and the layer holds this contract:
///
/// - a message younger than the window is handled at most once per group and key: if it was
///   handled before, its record is still there (records are purged a window after they were
///   written, which is after the message was created, plus an hour's allowance for clock
///   differences between producer and consumer database), and the delivery is a
///   [`Handled::Duplicate`];
/// - a message older than the window whose record is still there is a duplicate too;
/// - a message older than the window without a record is not handled: it may have been handled
///   and its record purged. The layer dead-letters it with a [`LateDelivery`] reason (inside a
///   [`Reject`](crate::Reject)), logs an error and counts
///   `courier_consume_late_deliveries_total`, instead of running the handler a second time
///   unnoticed.
///
/// ## Sizing the window
///
/// Make it longer than the oldest message you may still deliver, counted from its creation:
/// the time it can spend in the outbox (the relay's retries: about 45 minutes with its defaults)
/// plus the longest you may leave it in the outbox failure table before replaying it, plus what
/// the broker adds (its redelivery horizon, [`IdempotencyLayer::check_source`]; for a redrive
/// from its dead-letter queue, that queue's retention), plus a margin.
/// [`DEFAULT_IDEMPOTENCY_WINDOW`] is 14 days: broker-lite's 72 hours of retention plus a week in
/// the failure table, with room to spare. Records cost one small row per message and group over
/// the window. A message delayed at enqueue ([`Message::with_delay`]) ages during its delay when
/// the broker does not carry its due time (broker-lite does not): keep delays well inside the
/// window.
///
/// [`Message::created_at`]: courier_outbox::Message::created_at
/// [`Message::with_delay`]: courier_outbox::Message::with_delay
///
/// # Examples
///
/// ```no_run
/// use courier_middleware::{IdempotencyLayer, TxDelivery};
/// use tower::ServiceBuilder;
///
/// # async fn example(pool: sqlx::PgPool) {
/// let handler = ServiceBuilder::new()
///     .layer(IdempotencyLayer::new(pool))
///     .service_fn(|request: TxDelivery| async move {
///         let mut conn = request.tx().lock().await;
///         sqlx::query("INSERT INTO payments (message_id) VALUES ($1)")
///             .bind(request.delivery.message.id)
///             .execute(&mut *conn)
///             .await?;
///         Ok::<_, tower::BoxError>(())
///     });
/// # let _ = handler;
/// # }
/// ```
///
/// On SQLite (feature `sqlite`), the same with an `SqlitePool`; the handler receives a
/// `TxDelivery<Sqlite>`:
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn example(pool: sqlx::SqlitePool) {
/// use courier_middleware::{IdempotencyLayer, TxDelivery};
/// use sqlx::Sqlite;
/// use tower::ServiceBuilder;
///
/// let handler = ServiceBuilder::new()
///     .layer(IdempotencyLayer::new(pool))
///     .service_fn(|request: TxDelivery<Sqlite>| async move {
///         let mut conn = request.tx().lock().await;
///         sqlx::query("INSERT INTO payments (message_id) VALUES ($1)")
///             .bind(request.delivery.message.id)
///             .execute(&mut *conn)
///             .await?;
///         Ok::<_, tower::BoxError>(())
///     });
/// # let _ = handler;
/// # }
/// ```
pub struct Idempotency<S, DB: Database = DefaultDatabase> {
    inner: S,
    config: Arc<Config<DB>>,
}

impl<S: Clone, DB: Database> Clone for Idempotency<S, DB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: std::fmt::Debug, DB: Database> std::fmt::Debug for Idempotency<S, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, DB: Database> Idempotency<S, DB> {
    /// Wraps `inner` with the settings of `layer`.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// use courier_middleware::{Idempotency, IdempotencyLayer, TxDelivery};
    ///
    /// let handler = tower::service_fn(|_: TxDelivery| async { Ok::<_, tower::BoxError>(()) });
    /// let service = Idempotency::new(handler, &IdempotencyLayer::new(pool));
    /// # let _ = service;
    /// # }
    /// ```
    pub fn new(inner: S, layer: &IdempotencyLayer<DB>) -> Self {
        Self {
            inner,
            config: layer.config.clone(),
        }
    }

    /// The inner service.
    ///
    /// ```no_run
    /// # fn example<S>(mut service: courier_middleware::Idempotency<S>) {
    /// let inner: &_ = service.get_ref();
    /// # let _ = inner;
    /// # }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```no_run
    /// # fn example<S>(mut service: courier_middleware::Idempotency<S>) {
    /// let inner: &mut _ = service.get_mut();
    /// # let _ = inner;
    /// # }
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    ///
    /// ```no_run
    /// # fn example<S>(mut service: courier_middleware::Idempotency<S>) {
    /// let inner = service.into_inner();
    /// # let _ = inner;
    /// # }
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, DB: TxDatabase> Idempotency<S, DB> {
    /// Deletes records older than the window and returns how many went; see
    /// [`IdempotencyLayer::purge_expired`].
    ///
    /// ```no_run
    /// # async fn example<S>(service: courier_middleware::Idempotency<S>) -> Result<(), sqlx::Error> {
    /// let purged = service.purge_expired().await?;
    /// # let _ = purged;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        self.config.purge().await
    }
}

impl<DB: TxDatabase> Config<DB> {
    /// Deletes records older than the window plus the clock allowance.
    async fn purge(&self) -> Result<u64, sqlx::Error> {
        DB::idempotency_purge(&self.pool, self.window + late::CLOCK_ALLOWANCE).await
    }
}

impl<DB: Database> Config<DB> {
    /// `Some` when `delivery`'s message is older than the window.
    fn late(&self, delivery: &Delivery) -> Option<LateDelivery> {
        LateDelivery::check(delivery, self.window, chrono::Utc::now())
    }
}

/// The refusal of a message older than the window that found no record: logged, counted, and
/// dead-lettered.
fn refuse(late: LateDelivery) -> BoxError {
    tracing::error!(message.id = %late.message_id(), group = %late.group(),
        age = ?late.age(), window = ?late.window(), "{late}");
    metrics::counter!("courier_consume_late_deliveries_total", "group" => late.group().to_owned())
        .increment(1);
    crate::Reject::new(late).into()
}

impl<S, DB: TxDatabase> Service<Delivery> for Idempotency<S, DB>
where
    S: Service<TxDelivery<DB>> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Handled<S::Response>;
    type Error = BoxError;
    type Future = ResponseFuture<Handled<S::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        ResponseFuture::new(Box::pin(async move {
            let key = config.key.of(&delivery);
            let Some(tx) = begin::begin_recorded(&config.pool, &delivery.group, &key).await? else {
                tracing::debug!(message.id = %delivery.message.id, group = %delivery.group, %key,
                    "duplicate delivery acked without running the handler");
                metrics::counter!("courier_consume_duplicates_total", "group" => delivery.group)
                    .increment(1);
                return Ok(Handled::Duplicate);
            };
            // A new record for a message older than the window: it may have been handled before
            // and its record purged. The record goes with the rollback.
            if let Some(late) = config.late(&delivery) {
                tx.rollback().await?;
                return Err(refuse(late));
            }
            let record = [(delivery.group.clone(), key)];
            let handle = Tx::new(tx);
            let result = service
                .call(TxDelivery::new(delivery, handle.clone()))
                .await
                .map_err(Into::into);
            let tx = handle.take().await;
            match result {
                Ok(response) => {
                    let tx = tx.ok_or("the handler's transaction disappeared")?;
                    if !DB::commit_recorded(tx, &record).await? {
                        return Err(begin::transaction_lost());
                    }
                    Ok(Handled::Processed(response))
                }
                Err(error) => {
                    if let Some(tx) = tx {
                        // Dropping would roll back too; doing it here returns the connection clean.
                        let _ = tx.rollback().await;
                    }
                    Err(error)
                }
            }
        }))
    }
}
