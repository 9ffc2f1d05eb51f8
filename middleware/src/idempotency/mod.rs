//! Idempotent consumption on Postgres or SQLite (safeguard C7).

mod batch;
pub(crate) mod future;
pub(crate) mod store;

pub use batch::{BatchedIdempotency, BatchedIdempotencyLayer};

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sqlx::{Database, Pool, Postgres};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Layer, Service};

use crate::{Delivery, Tx, TxDatabase, TxDelivery};
use future::ResponseFuture;

/// Default deduplication window: 72 hours, broker-lite's (and RocketMQ's) default retention, after
/// which the broker cannot deliver the message again anyway.
///
/// ```
/// assert_eq!(courier_middleware::DEFAULT_IDEMPOTENCY_WINDOW.as_secs(), 72 * 3600);
/// ```
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(72 * 3600);

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
/// Two concurrent deliveries of one message give one effect. On Postgres the second insert waits on
/// the first transaction's row lock, then sees the row (the first committed) or takes over (it
/// rolled back). On SQLite the transaction is `BEGIN IMMEDIATE`: it takes the database's write lock
/// before the record is looked at, so the second delivery's transaction begins only after the first
/// ended, with the same outcome; handlers therefore run one at a time per database file.
/// The key is the message id or a declared header ([`IdempotencyKey`]); records expire after a
/// window ([`purge_expired`](Self::purge_expired)).
///
/// Only writes made through the [`Tx`] are covered. A side effect outside the database (an
/// HTTP call) may still repeat if the commit fails after it.
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
pub struct Idempotency<S, DB: Database = Postgres> {
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
        DB::idempotency_purge(&self.config.pool, self.config.window).await
    }
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
            let mut tx = DB::begin_write(&config.pool).await?;
            if !DB::idempotency_record(&mut tx, &delivery.group, &key).await? {
                tx.rollback().await?;
                tracing::debug!(message.id = %delivery.message.id, group = %delivery.group, %key,
                    "duplicate delivery acked without running the handler");
                metrics::counter!("courier_consume_duplicates_total", "group" => delivery.group)
                    .increment(1);
                return Ok(Handled::Duplicate);
            }
            let handle = Tx::new(tx);
            let result = service
                .call(TxDelivery::new(delivery, handle.clone()))
                .await
                .map_err(Into::into);
            let tx = handle.take().await;
            match result {
                Ok(response) => {
                    let tx = tx.ok_or("the handler's transaction disappeared")?;
                    tx.commit().await?;
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

/// Applies [`Idempotency`] to a transactional handler (`tower::Service<TxDelivery>`), turning it
/// into a handler of [`Delivery`].
///
/// `DB` is the database the records (and the handler's transaction) live in: Postgres by default,
/// `Sqlite` with feature `sqlite`; [`new`](Self::new) infers it from the pool.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) {
/// use std::time::Duration;
/// use courier_middleware::{IdempotencyKey, IdempotencyLayer};
///
/// let layer = IdempotencyLayer::new(pool)
///     .key(IdempotencyKey::Header("idempotency-key".into()))
///     .window(Duration::from_secs(7 * 24 * 3600));
/// # let _ = layer;
/// # }
/// ```
pub struct IdempotencyLayer<DB: Database = Postgres> {
    config: Arc<Config<DB>>,
}

impl<DB: Database> Clone for IdempotencyLayer<DB> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for IdempotencyLayer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<DB: Database> IdempotencyLayer<DB> {
    /// Records in `pool`'s database, keyed by message id, for [`DEFAULT_IDEMPOTENCY_WINDOW`]. The
    /// table is `courier_inbox.processed` on Postgres (created by `courier_outbox::MIGRATOR`),
    /// `courier_inbox_processed` on SQLite (created by `courier_outbox::SQLITE_MIGRATOR`).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), sqlx::Error> {
    /// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
    /// let layer = courier_middleware::IdempotencyLayer::new(pool);
    /// # let _ = layer;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            config: Arc::new(Config {
                pool,
                key: IdempotencyKey::MessageId,
                window: DEFAULT_IDEMPOTENCY_WINDOW,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config<DB> {
        Arc::make_mut(&mut self.config)
    }

    /// Deduplicates on `key` instead of the message id.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// use courier_middleware::{IdempotencyKey, IdempotencyLayer};
    ///
    /// let layer = IdempotencyLayer::new(pool).key(IdempotencyKey::Header("idempotency-key".into()));
    /// # let _ = layer;
    /// # }
    /// ```
    #[must_use]
    pub fn key(mut self, key: IdempotencyKey) -> Self {
        self.config_mut().key = key;
        self
    }

    /// Keeps records for `window` (default [`DEFAULT_IDEMPOTENCY_WINDOW`]). A redelivery after the
    /// window runs the handler again.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let layer = courier_middleware::IdempotencyLayer::new(pool)
    ///     .window(std::time::Duration::from_secs(7 * 24 * 3600));
    /// # let _ = layer;
    /// # }
    /// ```
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.config_mut().window = window;
        self
    }

    /// Declares how long after the first delivery the broker may redeliver
    /// ([`DeliverySource::redelivery_horizon`](crate::DeliverySource::redelivery_horizon)), and logs
    /// a warning when the window is shorter: a late redelivery would then run the handler twice.
    /// Returns whether the window covers the horizon.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let layer = courier_middleware::IdempotencyLayer::new(pool);
    /// assert!(layer.check_horizon(std::time::Duration::from_secs(3600)));
    /// # }
    /// ```
    pub fn check_horizon(&self, horizon: Duration) -> bool {
        let window = self.config.window;
        if window < horizon {
            tracing::warn!(
                ?window,
                ?horizon,
                "the idempotency window is shorter than the broker's redelivery horizon: \
                 a message redelivered late would be handled twice; lengthen the window"
            );
            return false;
        }
        true
    }

    /// [`check_horizon`](Self::check_horizon) with the source's
    /// [`redelivery_horizon`](crate::DeliverySource::redelivery_horizon), when it knows one.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let source = courier_middleware::MemorySource::new("billing");
    /// let layer = courier_middleware::IdempotencyLayer::new(pool);
    /// assert!(layer.check_source(&source));
    /// # }
    /// ```
    pub fn check_source<S: crate::DeliverySource>(&self, source: &S) -> bool {
        source
            .redelivery_horizon()
            .is_none_or(|horizon| self.check_horizon(horizon))
    }

    /// The deduplication window.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let layer = courier_middleware::IdempotencyLayer::new(pool);
    /// assert_eq!(layer.window_length(), courier_middleware::DEFAULT_IDEMPOTENCY_WINDOW);
    /// # }
    /// ```
    pub fn window_length(&self) -> Duration {
        self.config.window
    }
}

impl<DB: TxDatabase> IdempotencyLayer<DB> {
    /// Deletes records older than the window and returns how many went. Run it now and then, or
    /// use [`spawn_purger`](Self::spawn_purger).
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    /// let purged = courier_middleware::IdempotencyLayer::new(pool).purge_expired().await?;
    /// # let _ = purged;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        DB::idempotency_purge(&self.config.pool, self.config.window).await
    }

    /// Runs [`purge_expired`](Self::purge_expired) every `every` until `shutdown` is cancelled;
    /// failures are logged and retried on the next tick.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let shutdown = tokio_util::sync::CancellationToken::new();
    /// let layer = courier_middleware::IdempotencyLayer::new(pool);
    /// let purger = layer.spawn_purger(std::time::Duration::from_secs(3600), shutdown.clone());
    /// # let _ = purger;
    /// # }
    /// ```
    pub fn spawn_purger(&self, every: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match this.purge_expired().await {
                    Ok(purged) => tracing::debug!(purged, "purged expired idempotency records"),
                    Err(error) => tracing::warn!(%error, "purging idempotency records failed"),
                }
            }
        })
    }
}

impl<S, DB: Database> Layer<S> for IdempotencyLayer<DB> {
    type Service = Idempotency<S, DB>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, self)
    }
}
