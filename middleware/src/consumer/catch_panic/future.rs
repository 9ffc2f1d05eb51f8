//! The response future of [`CatchPanic`](super::CatchPanic).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use crate::Panicked;

pin_project! {
    /// Polls the inner future, turning a panic into a [`Panicked`] error.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Running { #[pin] future: F },
        Panicked { panic: Option<Panicked> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F) -> Self {
        Self {
            kind: Kind::Running { future },
        }
    }

    pub(crate) fn panicked(panic: Panicked) -> Self {
        Self {
            kind: Kind::Panicked { panic: Some(panic) },
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
        let panic = match self.project().kind.project() {
            KindProj::Running { future } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(result)) => return Poll::Ready(result.map_err(Into::into)),
                    Err(payload) => Panicked::from_payload(payload.as_ref()),
                }
            }
            KindProj::Panicked { panic } => panic
                .take()
                .expect("CatchPanic's future polled after completion"),
        };
        tracing::error!(
            panic = panic.message(),
            "handler panicked; the delivery will be redelivered"
        );
        Poll::Ready(Err(panic.into()))
    }
}
