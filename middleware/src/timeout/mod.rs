//! One timeout middleware for both sides: the consume timeout (safeguard C3) and the send timeout
//! (P5) are the same mechanism with different defaults and a different log line, so they are one
//! generic [`Timeout`] named by a [`TimeoutKind`]: [`ConsumeTimeout`] and [`SendTimeout`].

pub(crate) mod future;
mod kind;
mod layer;

use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{BoxError, Service};

use future::ResponseFuture;
pub use kind::{Consuming, DEFAULT_CONSUME_TIMEOUT, DEFAULT_SEND_TIMEOUT, Sending, TimeoutKind};
pub use layer::{ConsumeTimeoutLayer, SendTimeoutLayer, TimeoutLayer};

/// Fails a call that runs longer than its timeout with [`Elapsed`](crate::Elapsed). The inner
/// future is dropped, so a transaction it held rolls back.
///
/// On the consumer side ([`ConsumeTimeout`]) the delivery is redelivered; on the producer side
/// ([`SendTimeout`]) the send is a failed attempt that may be retried (the broker may still have
/// stored the message, so a retry can duplicate it, which consumers deduplicate).
///
/// # Examples
///
/// ```
/// use courier_middleware::{ConsumeTimeout, DEFAULT_SEND_TIMEOUT, SendTimeout};
/// use std::time::Duration;
///
/// let handler = tower::service_fn(|_: ()| async { Ok::<_, tower::BoxError>(()) });
/// let handler = ConsumeTimeout::new(handler, Duration::from_secs(60));
/// assert_eq!(handler.timeout(), Duration::from_secs(60));
///
/// let publisher = tower::service_fn(|_: courier_core::Message| async { Ok::<_, tower::BoxError>(()) });
/// assert_eq!(SendTimeout::with_default(publisher).timeout(), DEFAULT_SEND_TIMEOUT);
/// ```
pub struct Timeout<S, K> {
    inner: S,
    timeout: Duration,
    kind: PhantomData<fn() -> K>,
}

/// A handler's timeout per delivery (C3): 15 minutes by default, like RocketMQ's `consumeTimeout`.
pub type ConsumeTimeout<S> = Timeout<S, Consuming>;

/// A publisher's timeout per send (P5): 3 seconds by default, like RocketMQ's `sendMsgTimeout`.
pub type SendTimeout<S> = Timeout<S, Sending>;

impl<S, K: TimeoutKind> Timeout<S, K> {
    /// Wraps `inner` with `timeout` per call.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            kind: PhantomData,
        }
    }

    /// Wraps `inner` with the kind's default ([`DEFAULT_CONSUME_TIMEOUT`] or
    /// [`DEFAULT_SEND_TIMEOUT`]).
    pub fn with_default(inner: S) -> Self {
        Self::new(inner, K::DEFAULT)
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

// By hand: derives would require `K: Clone + Debug` of the marker.
impl<S: Clone, K> Clone for Timeout<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            timeout: self.timeout,
            kind: PhantomData,
        }
    }
}

impl<S: std::fmt::Debug, K: TimeoutKind> std::fmt::Debug for Timeout<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(K::NAME)
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S, K, Request> Service<Request> for Timeout<S, K>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    K: TimeoutKind,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        ResponseFuture::new(self.inner.call(request), self.timeout, K::ELAPSED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disposition, Elapsed};
    use tower::{Layer, ServiceExt};
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
    async fn a_call_that_answers_in_time_passes_through() {
        let (service, mut handle) = mock::pair::<u32, u32>();
        let service = ConsumeTimeout::new(service, Duration::from_secs(5));
        let call = tokio::spawn(service.oneshot(1));
        assert_request_eq!(handle, 1).send_response(2);
        assert_eq!(call.await.unwrap().unwrap(), 2);
    }

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
