//! Send retries (safeguard P4): two retries by default, exponential backoff with jitter.

use std::time::Duration;

use courier_core::Backoff;
use tower::Layer;

use crate::{LocalRetry, LocalRetryPolicy};

/// Retries a failed send with backoff: [`LocalRetry`] with the producer's defaults, 2 retries
/// (RocketMQ's `retryTimesWhenSendFailed`) 100 ms apart, doubling, 20 % jitter. A
/// `courier_core::Permanent` error is not retried. The response and the last error pass through
/// unchanged.
///
/// ```
/// use courier_middleware::SendRetryLayer;
/// use tower::Layer;
///
/// let publisher = tower::service_fn(|_: courier_core::Message| async { Ok::<_, tower::BoxError>(()) });
/// let publisher = SendRetryLayer::default().layer(publisher);
/// assert_eq!(publisher.policy().retries, 2);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SendRetryLayer {
    policy: LocalRetryPolicy,
}

impl SendRetryLayer {
    /// `retries` retries with the default backoff.
    pub fn new(retries: u32) -> Self {
        Self {
            policy: LocalRetryPolicy::new(retries).backoff(Backoff {
                base: Duration::from_millis(100),
                factor: 2.0,
                max: Duration::from_secs(2),
                jitter: 0.2,
            }),
        }
    }

    /// Sets the backoff.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy = self.policy.backoff(backoff);
        self
    }
}

impl Default for SendRetryLayer {
    /// Two retries.
    fn default() -> Self {
        Self::new(2)
    }
}

impl<S> Layer<S> for SendRetryLayer {
    type Service = LocalRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LocalRetry::new(inner, self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::Permanent;
    use tower::ServiceExt;
    use tower_test::{assert_request_eq, mock};

    #[tokio::test(start_paused = true)]
    async fn a_failed_send_is_tried_three_times_in_all() {
        let (service, mut handle) = mock::pair::<u8, ()>();
        let call = tokio::spawn(SendRetryLayer::default().layer(service).oneshot(1));
        for n in 0..3 {
            assert_request_eq!(handle, 1).send_error(format!("broker down {n}"));
        }
        assert_eq!(
            call.await.unwrap().unwrap_err().to_string(),
            "broker down 2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried() {
        let (service, mut handle) = mock::pair::<u8, ()>();
        let call = tokio::spawn(SendRetryLayer::default().layer(service).oneshot(1));
        assert_request_eq!(handle, 1).send_error(Permanent::new("no such topic"));
        assert!(call.await.unwrap().is_err());
        assert!(handle.next_request().await.is_none());
    }
}
