//! The response future of [`ConsumeMetrics`](super::ConsumeMetrics).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::BoxError;

use crate::Disposition;

pin_project! {
    /// Times the handler and counts its outcome.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        group: String,
        started: Instant,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, group: String) -> Self {
        Self {
            inner,
            group,
            started: Instant::now(),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result.map_err(Into::into),
        };
        let outcome = match &result {
            Ok(_) => Disposition::Ack,
            Err(error) => Disposition::of_error(error.as_ref()),
        };
        let group = this.group.clone();
        metrics::histogram!("courier_consume_duration_seconds", "group" => group.clone())
            .record(this.started.elapsed().as_secs_f64());
        metrics::counter!("courier_consume_total", "group" => group, "outcome" => outcome.as_str())
            .increment(1);
        Poll::Ready(result)
    }
}
