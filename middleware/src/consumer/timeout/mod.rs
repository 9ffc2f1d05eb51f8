//! Per-delivery consume timeout (safeguard C3).

pub(crate) mod future;

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Layer, Service};

use future::ResponseFuture;

/// RocketMQ's `consumeTimeout`: 15 minutes.
pub const DEFAULT_CONSUME_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Fails a handler call that runs longer than its timeout with [`Elapsed`](crate::Elapsed), which
/// redelivers the message. The handler's future is dropped, so a transaction it held rolls back.
///
/// # Examples
///
/// ```
/// use courier_middleware::ConsumeTimeout;
/// use std::time::Duration;
///
/// let handler = tower::service_fn(|_: ()| async { Ok::<_, tower::BoxError>(()) });
/// let handler = ConsumeTimeout::new(handler, Duration::from_secs(60));
/// assert_eq!(handler.timeout(), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone)]
pub struct ConsumeTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> ConsumeTimeout<S> {
    /// Wraps `inner` with a `timeout` per call.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    /// Wraps `inner` with the default timeout, [`DEFAULT_CONSUME_TIMEOUT`].
    pub fn with_default(inner: S) -> Self {
        Self::new(inner, DEFAULT_CONSUME_TIMEOUT)
    }

    /// The timeout per call.
    pub fn timeout(&self) -> Duration {
        self.timeout
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

impl<S, Request> Service<Request> for ConsumeTimeout<S>
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
        ResponseFuture::new(
            self.inner.call(request),
            self.timeout,
            "handler timed out; the delivery will be redelivered",
        )
    }
}

/// Applies [`ConsumeTimeout`] to a handler.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeTimeoutLayer {
    timeout: Duration,
}

impl ConsumeTimeoutLayer {
    /// A layer with `timeout` per call.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Default for ConsumeTimeoutLayer {
    /// [`DEFAULT_CONSUME_TIMEOUT`].
    fn default() -> Self {
        Self::new(DEFAULT_CONSUME_TIMEOUT)
    }
}

impl<S> Layer<S> for ConsumeTimeoutLayer {
    type Service = ConsumeTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsumeTimeout::new(inner, self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disposition, Elapsed};
    use tower::ServiceExt;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_times_out_and_is_redelivered() {
        let (service, mut handle) = mock::pair::<u32, ()>();
        let service = ConsumeTimeoutLayer::default().layer(service);
        let call = tokio::spawn(service.oneshot(1));
        // The handler receives the delivery and never answers; paused time runs to the deadline.
        let _pending = assert_request_eq!(handle, 1);
        let error = call.await.unwrap().unwrap_err();
        let elapsed = error.downcast_ref::<Elapsed>().unwrap();
        assert_eq!(elapsed.timeout(), DEFAULT_CONSUME_TIMEOUT);
        assert_eq!(
            Disposition::of_error(error.as_ref()),
            Disposition::Redeliver { after: None }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_answers_in_time_passes_through() {
        let (service, mut handle) = mock::pair::<u32, u32>();
        let service = ConsumeTimeout::new(service, Duration::from_secs(5));
        let call = tokio::spawn(service.oneshot(1));
        assert_request_eq!(handle, 1).send_response(2);
        assert_eq!(call.await.unwrap().unwrap(), 2);
    }
}
