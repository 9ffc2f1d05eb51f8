//! Turns a panicking handler into a retryable error (safeguard C2).

pub(crate) mod future;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::{Context, Poll};

use tower::{BoxError, Layer, Service};

use crate::Panicked;
use future::ResponseFuture;

/// Catches panics of the inner service, in `call` and while its future runs, and returns them as a
/// [`Panicked`] error, which redelivers the message instead of killing the consumer or losing it.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use courier_middleware::{CatchPanic, Panicked};
/// use tower::{Service, ServiceExt, service_fn};
///
/// let handler = service_fn(|_: u32| async move {
///     if true { panic!("boom") }
///     Ok::<_, tower::BoxError>(())
/// });
/// let error = CatchPanic::new(handler).oneshot(1).await.unwrap_err();
/// assert_eq!(error.downcast_ref::<Panicked>().unwrap().message(), "boom");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> CatchPanic<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
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

impl<S, Request> Service<Request> for CatchPanic<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => ResponseFuture::new(future),
            Err(payload) => ResponseFuture::panicked(Panicked::from_payload(payload.as_ref())),
        }
    }
}

/// Applies [`CatchPanic`] to a handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer {
    _private: (),
}

impl CatchPanicLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic::new(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Disposition;
    use tower::ServiceExt;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test]
    async fn panic_in_the_future_becomes_a_redelivery() {
        let service = CatchPanic::new(tower::service_fn(|n: u32| async move {
            assert!(n < 1, "too big: {n}");
            Ok::<_, BoxError>(n)
        }));
        let error = service.oneshot(5).await.unwrap_err();
        assert_eq!(
            error.downcast_ref::<Panicked>().unwrap().message(),
            "too big: 5"
        );
        assert_eq!(
            Disposition::of_error(error.as_ref()),
            Disposition::Redeliver { after: None }
        );
    }

    #[derive(Clone)]
    struct PanicsInCall;

    impl Service<()> for PanicsInCall {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            panic!("in call")
        }
    }

    #[tokio::test]
    async fn panic_in_call_becomes_a_redelivery() {
        let error = CatchPanic::new(PanicsInCall).oneshot(()).await.unwrap_err();
        assert_eq!(
            error.downcast_ref::<Panicked>().unwrap().message(),
            "in call"
        );
    }

    #[tokio::test]
    async fn success_and_errors_pass_through() {
        let (service, mut handle) = mock::pair::<u32, u32>();
        let mut service = CatchPanic::new(service);
        handle.allow(2);
        let ok = service.ready().await.unwrap().call(1);
        assert_request_eq!(handle, 1).send_response(10);
        assert_eq!(ok.await.unwrap(), 10);
        let failed = service.ready().await.unwrap().call(2);
        assert_request_eq!(handle, 2).send_error("db down");
        assert_eq!(failed.await.unwrap_err().to_string(), "db down");
    }
}
