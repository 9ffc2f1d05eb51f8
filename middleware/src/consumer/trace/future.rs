//! The response future of [`Trace`](super::Trace).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;
use tracing::instrument::Instrumented;

use crate::Disposition;

pin_project! {
    /// The handler's future inside its span; records the outcome when it completes.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: Instrumented<F>) -> Self {
        Self { inner }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let result = match inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result.map_err(Into::into),
        };
        let span = inner.span();
        let _entered = span.enter();
        match &result {
            Ok(_) => {
                span.record("outcome", Disposition::Ack.as_str());
                tracing::debug!("handled");
            }
            Err(error) => {
                let disposition = Disposition::of_error(error.as_ref());
                span.record("outcome", disposition.as_str());
                tracing::warn!(%error, outcome = disposition.as_str(), "handler failed");
            }
        }
        Poll::Ready(result)
    }
}
