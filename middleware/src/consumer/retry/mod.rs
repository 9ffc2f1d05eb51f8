//! Local retries with backoff before the delivery goes back to the broker.

pub(crate) mod future;

use std::task::{Context, Poll};
use std::time::Duration;

use courier_core::Backoff;
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::Disposition;
use future::ResponseFuture;

/// How often and how patiently [`LocalRetry`] retries a failed call in process.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LocalRetryPolicy {
    /// Retries after the first call (so `retries + 1` calls at most). Default 2.
    pub retries: u32,
    /// Delay before each retry. Default: 200 ms doubling up to 5 s, 20 % jitter.
    pub backoff: Backoff,
}

impl Default for LocalRetryPolicy {
    fn default() -> Self {
        Self {
            retries: 2,
            backoff: Backoff {
                base: Duration::from_millis(200),
                factor: 2.0,
                max: Duration::from_secs(5),
                jitter: 0.2,
            },
        }
    }
}

impl LocalRetryPolicy {
    /// A policy with `retries` retries and the default backoff.
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            ..Self::default()
        }
    }

    /// Sets the backoff.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// Retries a failed handler call in process, with backoff, before its error reaches the runtime
/// (which then nacks). Cheap for short glitches: the message does not travel back to the broker.
///
/// Only retryable errors are retried: a [`Reject`](crate::Reject) is returned at once, and so is a
/// [`Retry`](crate::Retry) carrying an explicit delay, which is the broker's to honour. The last
/// error is returned as is, so the delivery is never acked after a failure.
///
/// Requires a `Clone` request and service: each retry calls a clone of the service with a clone of
/// the delivery. With the [`Idempotency`](crate::Idempotency) layer or the durable inbox, put it
/// outside them, so that each retry gets a fresh transaction; inside does not compile
/// ([`TxDelivery`](crate::TxDelivery) is not `Clone`).
///
/// # Examples
///
/// ```
/// use courier_middleware::{LocalRetryLayer, LocalRetryPolicy};
/// use tower::ServiceBuilder;
///
/// let handler = tower::service_fn(|_: u32| async { Ok::<_, tower::BoxError>(()) });
/// let handler = ServiceBuilder::new()
///     .layer(LocalRetryLayer::new(LocalRetryPolicy::new(3)))
///     .service(handler);
/// # let _ = handler;
/// ```
#[derive(Debug, Clone)]
pub struct LocalRetry<S> {
    inner: S,
    policy: LocalRetryPolicy,
}

impl<S> LocalRetry<S> {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: S, policy: LocalRetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// The policy.
    pub fn policy(&self) -> &LocalRetryPolicy {
        &self.policy
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

impl<S, Request> Service<Request> for LocalRetry<S>
where
    S: Service<Request> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    Request: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The ready service goes into the future; `self` keeps a fresh clone (tower's usual dance).
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy;
        ResponseFuture::new(Box::pin(async move {
            let mut retries = 0;
            loop {
                let error = match service.call(request.clone()).await {
                    Ok(response) => return Ok(response),
                    Err(error) => error.into(),
                };
                let local = matches!(
                    Disposition::of_error(error.as_ref()),
                    Disposition::Redeliver { after: None }
                );
                if !local || retries >= policy.retries {
                    return Err(error);
                }
                retries += 1;
                let delay = policy.backoff.delay(retries);
                tracing::debug!(%error, retry = retries, ?delay, "handler failed; retrying locally");
                tokio::time::sleep(delay).await;
                service.ready().await.map_err(Into::into)?;
            }
        }))
    }
}

/// Applies [`LocalRetry`] to a handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalRetryLayer {
    policy: LocalRetryPolicy,
}

impl LocalRetryLayer {
    /// A layer with `policy`.
    pub fn new(policy: LocalRetryPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for LocalRetryLayer {
    type Service = LocalRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LocalRetry::new(inner, self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reject, Retry};
    use tower_test::{assert_request_eq, mock};

    fn retry_service() -> (LocalRetry<mock::Mock<u32, u32>>, mock::Handle<u32, u32>) {
        let (service, handle) = mock::pair::<u32, u32>();
        (
            LocalRetry::new(service, LocalRetryPolicy::default()),
            handle,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_glitch_is_retried_locally_and_succeeds() {
        let (service, mut handle) = retry_service();
        let call = tokio::spawn(service.oneshot(7));
        assert_request_eq!(handle, 7).send_error("glitch");
        assert_request_eq!(handle, 7).send_error("glitch");
        assert_request_eq!(handle, 7).send_response(70);
        assert_eq!(call.await.unwrap().unwrap(), 70);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_last_retry_the_error_is_returned_for_redelivery() {
        let (service, mut handle) = retry_service();
        let call = tokio::spawn(service.oneshot(7));
        for n in 0..3 {
            assert_request_eq!(handle, 7).send_error(format!("failure {n}"));
        }
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "failure 2");
        assert_eq!(
            Disposition::of_error(error.as_ref()),
            Disposition::Redeliver { after: None }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_is_not_retried() {
        let (service, mut handle) = retry_service();
        let call = tokio::spawn(service.oneshot(7));
        assert_request_eq!(handle, 7).send_error(Reject::new("malformed"));
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(
            Disposition::of_error(error.as_ref()),
            Disposition::DeadLetter
        );
        // No second call was made: the service is gone and never saw another request.
        assert!(handle.next_request().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_explicit_delay_goes_back_to_the_broker() {
        let (service, mut handle) = retry_service();
        let call = tokio::spawn(service.oneshot(7));
        assert_request_eq!(handle, 7).send_error(Retry::after(Duration::from_secs(60), "later"));
        let error = call.await.unwrap().unwrap_err();
        assert_eq!(
            Disposition::of_error(error.as_ref()),
            Disposition::Redeliver {
                after: Some(Duration::from_secs(60))
            }
        );
    }
}
