//! The response future of [`Timeout`](super::Timeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::BoxError;

use crate::Elapsed;

pin_project! {
    /// The inner future raced against the timeout.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
        what: &'static str,
    }
}

impl<F> ResponseFuture<F> {
    /// `what` is logged when the timeout passes.
    pub(crate) fn new(response: F, timeout: Duration, what: &'static str) -> Self {
        Self {
            response,
            sleep: tokio::time::sleep(timeout),
            timeout,
            what,
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
        if let Poll::Ready(result) = this.response.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this.sleep.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                tracing::warn!(timeout = ?this.timeout, "{}", this.what);
                Poll::Ready(Err(Elapsed::new(*this.timeout).into()))
            }
        }
    }
}
