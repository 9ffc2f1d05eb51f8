//! Handler metrics per consumer group (safeguard L3).

pub(crate) mod future;

use std::task::{Context, Poll};

use tower::{BoxError, Layer, Service};

use crate::AsDelivery;
use future::ResponseFuture;

/// Records, through the `metrics` facade, per consumer group:
///
/// | metric | kind | labels |
/// |---|---|---|
/// | `courier_consume_duration_seconds` | histogram | `group` |
/// | `courier_consume_total` | counter | `group`, `outcome` (`ack`, `redeliver`, `dead_letter`) |
///
/// The [`Consumer`](crate::Consumer) runtime adds what it did with each outcome:
/// `courier_consumer_acks_total`, `courier_consumer_redeliveries_total`,
/// `courier_consumer_dead_letters_total`.
#[derive(Debug, Clone)]
pub struct ConsumeMetrics<S> {
    inner: S,
}

impl<S> ConsumeMetrics<S> {
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

impl<S, Request> Service<Request> for ConsumeMetrics<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    Request: AsDelivery,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let group = request.delivery().group.clone();
        ResponseFuture::new(self.inner.call(request), group)
    }
}

/// Applies [`ConsumeMetrics`] to a handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsumeMetricsLayer {
    _private: (),
}

impl ConsumeMetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ConsumeMetricsLayer {
    type Service = ConsumeMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsumeMetrics::new(inner)
    }
}
