//! The layer of [`Timeout`](super::Timeout).

use std::marker::PhantomData;
use std::time::Duration;

use tower::Layer;

use super::{Consuming, Sending, Timeout, TimeoutKind};

/// Applies [`Timeout`] to a service.
///
/// ```
/// use courier_middleware::{ConsumeTimeoutLayer, SendTimeoutLayer};
/// use std::time::Duration;
///
/// let consume = ConsumeTimeoutLayer::new(Duration::from_secs(60));
/// let send = SendTimeoutLayer::default(); // 3 s
/// # let _ = (consume, send);
/// ```
pub struct TimeoutLayer<K> {
    timeout: Duration,
    kind: PhantomData<fn() -> K>,
}

/// Applies [`ConsumeTimeout`](super::ConsumeTimeout) to a handler.
pub type ConsumeTimeoutLayer = TimeoutLayer<Consuming>;

/// Applies [`SendTimeout`](super::SendTimeout) to a publisher.
pub type SendTimeoutLayer = TimeoutLayer<Sending>;

impl<K: TimeoutKind> TimeoutLayer<K> {
    /// A layer with `timeout` per call.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            kind: PhantomData,
        }
    }
}

impl<K: TimeoutKind> Default for TimeoutLayer<K> {
    /// The kind's default timeout.
    fn default() -> Self {
        Self::new(K::DEFAULT)
    }
}

impl<K> Clone for TimeoutLayer<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for TimeoutLayer<K> {}

impl<K: TimeoutKind> std::fmt::Debug for TimeoutLayer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("kind", &K::NAME)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S, K: TimeoutKind> Layer<S> for TimeoutLayer<K> {
    type Service = Timeout<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout)
    }
}
