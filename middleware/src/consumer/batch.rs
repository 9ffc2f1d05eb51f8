//! Batch consumption (safeguard C6): several deliveries per handler call.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::boxed::BoxResponseFuture;
use crate::{Delivery, Disposition, Panicked};

/// The batch a delivery was part of failed; every delivery of the batch gets this error, with the
/// batch error's [`Disposition`] (so a [`Reject`](crate::Reject) dead-letters them all, a
/// [`Retry`](crate::Retry) delay applies to all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFailed {
    reason: String,
    disposition: Disposition,
}

impl BatchFailed {
    /// What the batch handler's error said.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// What happens to each delivery of the batch.
    pub fn disposition(&self) -> Disposition {
        self.disposition
    }
}

impl fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the batch failed: {}", self.reason)
    }
}

impl std::error::Error for BatchFailed {}

struct Job {
    delivery: Delivery,
    reply: oneshot::Sender<Result<(), BoxError>>,
}

/// Turns a batch handler (`tower::Service<Vec<Delivery>>`) into a handler of single deliveries for
/// the [`Consumer`](crate::Consumer) runtime: deliveries in flight at the same time are handed over
/// together, up to `max` per call (RocketMQ's `consumeMessageBatchMaxSize`). The batch succeeds or
/// fails as a whole: every delivery is acked after `Ok`, and gets a [`BatchFailed`] otherwise.
///
/// No timer: a batch is whatever is waiting when the handler is free, so a lone delivery is not
/// delayed. For real batches give the runtime room: `batch_size` and `concurrency` of at least
/// `max`. The default batch size of the runtime, 1, keeps the precise control the document
/// recommends; use this only for handlers that gain from batches (bulk inserts).
///
/// Needs a tokio runtime when layered (it spawns the worker that calls the batch handler, which
/// stops when every clone of the service is dropped).
#[derive(Debug, Clone)]
pub struct Batch {
    jobs: PollSender<Job>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("message_id", &self.delivery.message.id)
            .finish_non_exhaustive()
    }
}

impl Service<Delivery> for Batch {
    type Response = ();
    type Error = BoxError;
    type Future = BoxResponseFuture<()>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.jobs
            .poll_reserve(cx)
            .map_err(|_| BoxError::from("the batch worker stopped"))
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let (reply, answer) = oneshot::channel();
        let sent = self.jobs.send_item(Job { delivery, reply });
        BoxResponseFuture::new(Box::pin(async move {
            sent.map_err(|_| BoxError::from("the batch worker stopped"))?;
            answer
                .await
                .map_err(|_| BoxError::from("the batch worker dropped the delivery"))?
        }))
    }
}

/// Applies [`Batch`] to a batch handler.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use courier_middleware::{BatchLayer, Delivery};
/// use tower::ServiceBuilder;
///
/// let handler = ServiceBuilder::new()
///     .layer(BatchLayer::new(32))
///     .service_fn(|batch: Vec<Delivery>| async move {
///         println!("{} deliveries in one call", batch.len());
///         Ok::<_, tower::BoxError>(())
///     });
/// # let _ = handler;
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BatchLayer {
    max: usize,
}

impl BatchLayer {
    /// At most `max` deliveries per call (at least 1).
    pub fn new(max: usize) -> Self {
        Self { max: max.max(1) }
    }
}

impl<S> Layer<S> for BatchLayer
where
    S: Service<Vec<Delivery>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Service = Batch;

    fn layer(&self, inner: S) -> Self::Service {
        let (sender, receiver) = mpsc::channel(self.max * 2);
        tokio::spawn(work(inner, receiver, self.max));
        Batch {
            jobs: PollSender::new(sender),
        }
    }
}

async fn work<S>(mut service: S, mut jobs: mpsc::Receiver<Job>, max: usize)
where
    S: Service<Vec<Delivery>>,
    S::Error: Into<BoxError>,
{
    loop {
        let mut batch = Vec::with_capacity(max);
        if jobs.recv_many(&mut batch, max).await == 0 {
            return;
        }
        let (deliveries, replies): (Vec<Delivery>, Vec<_>) = batch
            .into_iter()
            .map(|job| (job.delivery, job.reply))
            .unzip();
        let call = async {
            let ready = service.ready().await.map_err(Into::into)?;
            ready.call(deliveries).await.map_err(Into::into)
        };
        let result = match AssertUnwindSafe(call).catch_unwind().await {
            Ok(result) => result,
            Err(payload) => Err(BoxError::from(Panicked::from_payload(payload.as_ref()))),
        };
        let failure = result.err().map(|error| BatchFailed {
            disposition: Disposition::of_error(error.as_ref()),
            reason: error.to_string(),
        });
        for reply in replies {
            let answer = match &failure {
                None => Ok(()),
                Some(failed) => Err(BoxError::from(failed.clone())),
            };
            let _ = reply.send(answer);
        }
    }
}
