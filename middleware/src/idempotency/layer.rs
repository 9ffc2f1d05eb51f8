//! [`IdempotencyLayer`]: the settings of [`Idempotency`], and purging expired records.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Database, Pool};

use crate::database::DefaultDatabase;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Layer;

use super::{Config, DEFAULT_IDEMPOTENCY_WINDOW, Idempotency, IdempotencyKey};
use crate::TxDatabase;

/// Applies [`Idempotency`] to a transactional handler (`tower::Service<TxDelivery>`), turning it
/// into a handler of [`Delivery`](crate::Delivery).
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
pub struct IdempotencyLayer<DB: Database = DefaultDatabase> {
    pub(super) config: Arc<Config<DB>>,
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

    /// Deduplicates messages for `window` from their creation (default
    /// [`DEFAULT_IDEMPOTENCY_WINDOW`]): records are kept that long (plus an hour's allowance for
    /// clock differences), and a message older than the window that finds no record is
    /// dead-lettered ([`LateDelivery`](crate::LateDelivery)) instead of handled. Size it past the
    /// oldest message you may still deliver: see [`Idempotency`](crate::Idempotency#sizing-the-window) and
    /// [`DEFAULT_IDEMPOTENCY_WINDOW`].
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
    /// a warning when the window is shorter: a late redelivery would then be dead-lettered as a
    /// [`LateDelivery`](crate::LateDelivery). Returns whether the window covers the horizon. The
    /// window counts from the message's creation, so it must also cover the time before the
    /// first delivery (see [`DEFAULT_IDEMPOTENCY_WINDOW`]).
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
                 a message redelivered late would be dead-lettered as a late delivery; \
                 lengthen the window"
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
    /// Deletes records older than the window (plus an hour's allowance for clock differences
    /// between producers and this database) and returns how many went. Run it now and then, or
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
        self.config.purge().await
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
