//! Batched idempotency: many deliveries share one transaction.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use sqlx::Database;

use crate::database::DefaultDatabase;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::PollSender;
use tower::{BoxError, Layer, Service, ServiceExt};

use super::{Config, Handled, IdempotencyLayer, LateDelivery, begin, refuse};
use crate::boxed::BoxResponseFuture;
use crate::{Delivery, Panicked, Tx, TxDatabase, TxDelivery};

type Reply<R> = oneshot::Sender<Result<Handled<R>, BoxError>>;

struct Job<R> {
    delivery: Delivery,
    reply: Reply<R>,
}

/// [`Idempotency`](super::Idempotency) with its writes batched: concurrent calls are gathered
/// (up to `max_batch`) into one transaction, so a batch costs one `BEGIN`, one multi-row insert of
/// the records and one `COMMIT` instead of one of each per delivery.
///
/// The guarantee for the database is the same as unbatched: a delivery's record commits together
/// with its handler's writes, and each caller gets its answer (and the runtime acks) only after the
/// commit. Batches are optimistic: when a handler fails, the whole transaction rolls back, that
/// delivery gets its error (and is redelivered), and the rest of the batch runs again in a fresh
/// transaction. So a handler may run more than once when a neighbour fails, its earlier run fully
/// rolled back: effects outside the database may repeat (as they may unbatched, if a commit
/// fails). If the commit fails, every delivery of the batch fails and is redelivered.
///
/// Handlers of a batch run one after another on the batch's connection, so put a
/// [`ConsumeTimeoutLayer`](crate::ConsumeTimeoutLayer) around the inner handler to keep one slow
/// handler from holding the batch. Records are inserted in key order, so that batches of several
/// processes take row locks in the same order.
///
/// On SQLite a batch's transaction is `BEGIN IMMEDIATE`: it holds the database's write lock for
/// the whole batch, so batches of several workers run one after another.
///
/// Built with [`IdempotencyLayer::batched`]; needs a tokio runtime when layered (it spawns its
/// workers, which stop when every clone of the service is dropped). The service does not name the
/// database: the workers hold the pool.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) {
/// use courier_middleware::{BatchedIdempotency, Handled, IdempotencyLayer, TxDelivery};
/// use tower::Layer;
///
/// let handler = tower::service_fn(|_: TxDelivery| async { Ok::<_, tower::BoxError>(()) });
/// let service: BatchedIdempotency<()> = IdempotencyLayer::new(pool).batched(64).layer(handler);
/// # let _ = service;
/// # }
/// ```
#[derive(Debug)]
pub struct BatchedIdempotency<R> {
    jobs: PollSender<Job<R>>,
}

impl<R> std::fmt::Debug for Job<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("message_id", &self.delivery.message.id)
            .finish_non_exhaustive()
    }
}

impl<R> Clone for BatchedIdempotency<R> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<R: Send + 'static> Service<Delivery> for BatchedIdempotency<R> {
    type Response = Handled<R>;
    type Error = BoxError;
    type Future = BoxResponseFuture<Handled<R>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.jobs
            .poll_reserve(cx)
            .map_err(|_| BoxError::from("the idempotency batch workers stopped"))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let (reply, answer) = oneshot::channel();
        let sent = self.jobs.send_item(Job { delivery, reply });
        BoxResponseFuture::new(Box::pin(async move {
            sent.map_err(|_| BoxError::from("the idempotency batch workers stopped"))?;
            answer
                .await
                .map_err(|_| BoxError::from("the idempotency batch worker dropped the delivery"))?
        }))
    }
}

/// Applies [`BatchedIdempotency`]; see [`IdempotencyLayer::batched`].
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) {
/// let layer = courier_middleware::IdempotencyLayer::new(pool).batched(128).workers(2);
/// # let _ = layer;
/// # }
/// ```
pub struct BatchedIdempotencyLayer<DB: Database = DefaultDatabase> {
    config: Arc<Config<DB>>,
    max_batch: usize,
    workers: usize,
}

impl<DB: Database> Clone for BatchedIdempotencyLayer<DB> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            max_batch: self.max_batch,
            workers: self.workers,
        }
    }
}

impl<DB: Database> std::fmt::Debug for BatchedIdempotencyLayer<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedIdempotencyLayer")
            .field("config", &self.config)
            .field("max_batch", &self.max_batch)
            .field("workers", &self.workers)
            .finish()
    }
}

impl<DB: Database> IdempotencyLayer<DB> {
    /// Batches the records of up to `max_batch` concurrent deliveries into one transaction; see
    /// [`BatchedIdempotency`]. One worker (one connection) unless
    /// [`workers`](BatchedIdempotencyLayer::workers) says more.
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let layer = courier_middleware::IdempotencyLayer::new(pool).batched(128);
    /// # let _ = layer;
    /// # }
    /// ```
    pub fn batched(&self, max_batch: usize) -> BatchedIdempotencyLayer<DB> {
        BatchedIdempotencyLayer {
            config: self.config.clone(),
            max_batch: max_batch.max(1),
            workers: 1,
        }
    }
}

impl<DB: Database> BatchedIdempotencyLayer<DB> {
    /// Runs `n` batches at the same time, each on its own connection (at least 1). On SQLite they
    /// still commit one at a time (one writer per database file).
    ///
    /// ```no_run
    /// # async fn example(pool: sqlx::PgPool) {
    /// let layer = courier_middleware::IdempotencyLayer::new(pool).batched(128).workers(4);
    /// # let _ = layer;
    /// # }
    /// ```
    #[must_use]
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }
}

impl<S, DB: TxDatabase> Layer<S> for BatchedIdempotencyLayer<DB>
where
    S: Service<TxDelivery<DB>> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Service = BatchedIdempotency<S::Response>;

    fn layer(&self, inner: S) -> Self::Service {
        let (sender, receiver) = mpsc::channel(self.max_batch * self.workers * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..self.workers {
            tokio::spawn(work(
                self.config.clone(),
                inner.clone(),
                receiver.clone(),
                self.max_batch,
            ));
        }
        BatchedIdempotency {
            jobs: PollSender::new(sender),
        }
    }
}

async fn work<S, R, DB: TxDatabase>(
    config: Arc<Config<DB>>,
    mut service: S,
    jobs: Arc<Mutex<mpsc::Receiver<Job<R>>>>,
    max_batch: usize,
) where
    S: Service<TxDelivery<DB>, Response = R> + Clone + Send + 'static,
    R: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            let mut jobs = jobs.lock().await;
            if jobs.recv_many(&mut batch, max_batch).await == 0 {
                return;
            }
        }
        run_batch(&config, &mut service, batch).await;
    }
}

async fn run_batch<S, R, DB: TxDatabase>(config: &Config<DB>, service: &mut S, batch: Vec<Job<R>>)
where
    S: Service<TxDelivery<DB>, Response = R> + Clone + Send + 'static,
    R: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    // Messages older than the window are answered on their own, before the batch's transaction:
    // a duplicate if their record is still there, refused otherwise. None of them may leave a
    // record in the batch's commit.
    let mut on_time = Vec::with_capacity(batch.len());
    for job in batch {
        match config.late(&job.delivery) {
            Some(late) => {
                let answer = answer_late(config, &job.delivery, late).await;
                let _ = job.reply.send(answer);
            }
            None => on_time.push(job),
        }
    }
    let mut batch = on_time;
    // Optimistic: no savepoints. When a handler fails, the whole transaction rolls back, that
    // delivery gets its error, and the rest of the batch runs again in a fresh transaction.
    while !batch.is_empty() {
        let keys: Vec<(String, String)> = batch
            .iter()
            .map(|job| (job.delivery.group.clone(), config.key.of(&job.delivery)))
            .collect();
        let (tx, mut fresh) = match begin::begin_recorded_many(&config.pool, &keys).await {
            Ok(recorded) => recorded,
            Err(error) => return fail_all(batch, &error.to_string()),
        };
        let handle = Tx::new(tx);
        let mut answers = Vec::with_capacity(batch.len());
        let mut processed = Vec::with_capacity(batch.len());
        let mut failed = None;
        for (index, (job, key)) in batch.iter().zip(&keys).enumerate() {
            // A key seen earlier in this batch (or committed by someone else) is a duplicate.
            if !fresh.remove(key) {
                answers.push(Handled::Duplicate);
                continue;
            }
            match handle_one(service.clone(), &handle, job.delivery.clone()).await {
                Ok(response) => {
                    answers.push(Handled::Processed(response));
                    processed.push(key.clone());
                }
                Err(error) => {
                    failed = Some((index, error));
                    break;
                }
            }
        }
        let tx = handle.take().await;
        if let Some((index, error)) = failed {
            if let Some(tx) = tx {
                let _ = tx.rollback().await;
            }
            let _ = batch.remove(index).reply.send(Err(error));
            continue;
        }
        let committed = match tx {
            Some(tx) => commit_held(tx, &processed).await,
            None => Err("the batch's transaction disappeared".to_owned()),
        };
        if let Err(error) = committed {
            return fail_all(batch, &format!("committing the batch failed: {error}"));
        }
        for (job, answer) in batch.drain(..).zip(answers) {
            let _ = job.reply.send(Ok(answer));
        }
    }
}

/// Commits the batch if its transaction still holds the records of the deliveries it processed
/// (see [`IdempotencySql::idempotency_still_held`](super::store::IdempotencySql::idempotency_still_held)).
async fn commit_held<DB: TxDatabase>(
    tx: sqlx::Transaction<'static, DB>,
    processed: &[(String, String)],
) -> Result<(), String> {
    match DB::commit_recorded(tx, processed).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(begin::transaction_lost().to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// A message older than the window: a duplicate if its record is still there, else refused.
async fn answer_late<R, DB: TxDatabase>(
    config: &Config<DB>,
    delivery: &Delivery,
    late: LateDelivery,
) -> Result<Handled<R>, BoxError> {
    let key = config.key.of(delivery);
    if DB::idempotency_seen(&config.pool, &delivery.group, &key).await? {
        return Ok(Handled::Duplicate);
    }
    Err(refuse(late))
}

/// Runs one handler, turning a panic into an error.
async fn handle_one<S, R, DB: Database>(
    service: S,
    handle: &Tx<DB>,
    delivery: Delivery,
) -> Result<R, BoxError>
where
    S: Service<TxDelivery<DB>, Response = R>,
    S::Error: Into<BoxError>,
{
    let call = service.oneshot(TxDelivery::new(delivery, handle.clone()));
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(result) => result.map_err(Into::into),
        Err(payload) => Err(BoxError::from(Panicked::from_payload(payload.as_ref()))),
    }
}

fn fail_all<R>(batch: Vec<Job<R>>, error: &str) {
    for job in batch {
        let _ = job.reply.send(Err(BoxError::from(error)));
    }
}
