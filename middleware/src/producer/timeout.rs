//! Per-send timeout (safeguard P5).

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Layer, Service};

use crate::consumer::timeout::future::ResponseFuture;

/// RocketMQ's `sendMsgTimeout`: 3 seconds.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(3);

/// Fails a send that gets no answer within its timeout with [`Elapsed`](crate::Elapsed)
/// (retryable; the broker may still have stored it, so the retry can duplicate, which consumers
/// deduplicate).
///
/// ```
/// use courier_middleware::{SendTimeout, DEFAULT_SEND_TIMEOUT};
///
/// let publisher = tower::service_fn(|_: courier_outbox::Message| async { Ok::<_, tower::BoxError>(()) });
/// assert_eq!(SendTimeout::with_default(publisher).timeout(), DEFAULT_SEND_TIMEOUT);
/// ```
#[derive(Debug, Clone)]
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> SendTimeout<S> {
    /// Wraps `inner` with `timeout` per send.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    /// Wraps `inner` with [`DEFAULT_SEND_TIMEOUT`].
    pub fn with_default(inner: S) -> Self {
        Self::new(inner, DEFAULT_SEND_TIMEOUT)
    }

    /// The timeout per send.
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

impl<S, Request> Service<Request> for SendTimeout<S>
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
            "send timed out: the broker may or may not have the message",
        )
    }
}

/// Applies [`SendTimeout`].
#[derive(Debug, Clone, Copy)]
pub struct SendTimeoutLayer {
    timeout: Duration,
}

impl SendTimeoutLayer {
    /// A layer with `timeout` per send.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Default for SendTimeoutLayer {
    /// [`DEFAULT_SEND_TIMEOUT`].
    fn default() -> Self {
        Self::new(DEFAULT_SEND_TIMEOUT)
    }
}

impl<S> Layer<S> for SendTimeoutLayer {
    type Service = SendTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SendTimeout::new(inner, self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Elapsed;
    use tower::ServiceExt;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test(start_paused = true)]
    async fn a_send_without_an_answer_times_out_after_three_seconds() {
        let (service, mut handle) = mock::pair::<u8, ()>();
        let call = tokio::spawn(SendTimeoutLayer::default().layer(service).oneshot(1));
        let _unanswered = assert_request_eq!(handle, 1);
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(
            error.downcast_ref::<Elapsed>().unwrap().timeout(),
            Duration::from_secs(3)
        );
    }
}
