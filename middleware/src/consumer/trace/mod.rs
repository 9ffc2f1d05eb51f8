//! A tracing span per delivery, continuing the producer's W3C trace context (safeguard L4).

pub(crate) mod future;

use std::task::{Context, Poll};

use tower::{BoxError, Layer, Service};
use tracing::Instrument;

use crate::{AsDelivery, TRACEPARENT, TraceParent};
use future::ResponseFuture;

/// Runs each handler call in a `courier.consume` span with the message id, topic, group and attempt,
/// and the `trace_id` / `parent_span_id` of the producer's `traceparent` header when it has one;
/// records the `outcome` (`ack`, `redeliver`, `dead_letter`) and logs failures.
///
/// # Examples
///
/// ```
/// use courier_middleware::{Delivery, TraceLayer};
/// use tower::ServiceBuilder;
///
/// let handler = ServiceBuilder::new()
///     .layer(TraceLayer::new())
///     .service_fn(|_: Delivery| async { Ok::<_, tower::BoxError>(()) });
/// # let _ = handler;
/// ```
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Trace<S> {
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

impl<S, Request> Service<Request> for Trace<S>
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
        let delivery = request.delivery();
        let parent = delivery
            .message
            .headers
            .get(TRACEPARENT)
            .and_then(|value| TraceParent::parse(value));
        let span = tracing::info_span!(
            "courier.consume",
            message.id = %delivery.message.id,
            topic = %delivery.message.topic,
            group = %delivery.group,
            attempt = delivery.attempt,
            trace_id = parent.as_ref().map(TraceParent::trace_id),
            parent_span_id = parent.as_ref().map(TraceParent::span_id),
            outcome = tracing::field::Empty,
        );
        let future = span.in_scope(|| self.inner.call(request));
        ResponseFuture::new(future.instrument(span))
    }
}

/// Applies [`Trace`] to a handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer {
    _private: (),
}

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(inner)
    }
}
