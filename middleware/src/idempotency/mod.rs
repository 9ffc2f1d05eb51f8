//! Idempotent consumption on Postgres (safeguard C7).

mod batch;
pub(crate) mod future;
mod store;

pub use batch::{BatchedIdempotency, BatchedIdempotencyLayer};

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Layer, Service};

use crate::{Delivery, PgTx, TxDelivery};
use future::ResponseFuture;

/// Default deduplication window: 72 hours, broker-lite's (and RocketMQ's) default retention, after
/// which the broker cannot deliver the message again anyway.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(72 * 3600);

/// What the idempotency layer did with a delivery. Both variants ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled<R> {
    /// The handler ran and its transaction, with the idempotency record, committed.
    Processed(R),
    /// The record already existed: the handler did not run.
    Duplicate,
}

impl<R> Handled<R> {
    /// Whether this delivery was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate)
    }
}

/// Which value identifies "the same message" for deduplication.
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

#[derive(Debug, Clone)]
struct Config {
    pool: PgPool,
    key: IdempotencyKey,
    window: Duration,
}

/// Runs each handler at most once per (consumer group, message) with its effects.
///
/// For each delivery, in one Postgres transaction:
///
/// 1. `INSERT INTO courier_inbox.processed (group, key) … ON CONFLICT DO NOTHING`;
/// 2. if the row already existed, roll back and answer [`Handled::Duplicate`] (the runtime acks,
///    the handler does not run);
/// 3. otherwise call the handler with a [`TxDelivery`], whose [`PgTx`] is that transaction: the
///    handler's own writes go in it;
/// 4. on `Ok`, commit and answer [`Handled::Processed`]; the runtime acks after the commit. On an
///    error (or a panic, or a timeout dropping the future), roll back: the record goes with the
///    handler's writes, and the redelivery runs the handler again.
///
/// Two concurrent deliveries of one message give one effect: the second insert waits on the first
/// transaction's row lock, then sees the row (the first committed) or takes over (it rolled back).
/// The key is the message id or a declared header ([`IdempotencyKey`]); records expire after a
/// window ([`purge_expired`](Self::purge_expired)).
///
/// Only writes made through the [`PgTx`] are covered. A side effect outside the database (an
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
#[derive(Debug, Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Idempotency<S> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn new(inner: S, layer: &IdempotencyLayer) -> Self {
        Self {
            inner,
            config: layer.config.clone(),
        }
    }

    /// Deletes records older than the window and returns how many went; see
    /// [`IdempotencyLayer::purge_expired`].
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        store::purge(&self.config.pool, self.config.window).await
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Delivery> for Idempotency<S>
where
    S: Service<TxDelivery> + Clone + Send + 'static,
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
            let mut tx = config.pool.begin().await?;
            if !store::record(&mut tx, &delivery.group, &key).await? {
                tx.rollback().await?;
                tracing::debug!(message.id = %delivery.message.id, group = %delivery.group, %key,
                    "duplicate delivery acked without running the handler");
                metrics::counter!("courier_consume_duplicates_total", "group" => delivery.group)
                    .increment(1);
                return Ok(Handled::Duplicate);
            }
            let handle = PgTx::new(tx);
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
#[derive(Debug, Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

impl IdempotencyLayer {
    /// Records in `pool`'s database (table `courier_inbox.processed`, created by
    /// `courier_outbox::MIGRATOR`), keyed by message id, for [`DEFAULT_IDEMPOTENCY_WINDOW`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            config: Arc::new(Config {
                pool,
                key: IdempotencyKey::MessageId,
                window: DEFAULT_IDEMPOTENCY_WINDOW,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Deduplicates on `key` instead of the message id.
    #[must_use]
    pub fn key(mut self, key: IdempotencyKey) -> Self {
        self.config_mut().key = key;
        self
    }

    /// Keeps records for `window` (default [`DEFAULT_IDEMPOTENCY_WINDOW`]). A redelivery after the
    /// window runs the handler again.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.config_mut().window = window;
        self
    }

    /// Declares how long after the first delivery the broker may redeliver
    /// ([`DeliverySource::redelivery_horizon`](crate::DeliverySource::redelivery_horizon)), and logs
    /// a warning when the window is shorter: a late redelivery would then run the handler twice.
    /// Returns whether the window covers the horizon.
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
    pub fn check_source<S: crate::DeliverySource>(&self, source: &S) -> bool {
        source
            .redelivery_horizon()
            .is_none_or(|horizon| self.check_horizon(horizon))
    }

    /// The deduplication window.
    pub fn window_length(&self) -> Duration {
        self.config.window
    }

    /// Deletes records older than the window and returns how many went. Run it now and then, or
    /// use [`spawn_purger`](Self::spawn_purger).
    ///
    /// # Errors
    ///
    /// The database error.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        store::purge(&self.config.pool, self.config.window).await
    }

    /// Runs [`purge_expired`](Self::purge_expired) every `every` until `shutdown` is cancelled;
    /// failures are logged and retried on the next tick.
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

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, self)
    }
}
