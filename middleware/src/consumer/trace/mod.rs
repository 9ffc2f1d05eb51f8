//! A tracing span per delivery, continuing the producer's W3C trace context (safeguard L4).

pub(crate) mod future;

use std::task::{Context, Poll};

use tower::{BoxError, Layer, Service};
use tracing::Instrument;

use courier_core::trace_context;

use crate::AsDelivery;
use future::ResponseFuture;

/// Runs each handler call in a `courier.consume` span with the message id, topic, group and attempt,
/// and the `trace_id` / `parent_span_id` of the producer's `traceparent` header when it has one.
/// With an OpenTelemetry layer the span is the child of the producer's span in that trace
/// ([`courier_core::trace_context::adopt`]). It
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
        let headers = &delivery.message.headers;
        let parent = trace_context::span_context(headers);
        let span = tracing::info_span!(
            "courier.consume",
            message.id = %delivery.message.id,
            topic = %delivery.message.topic,
            group = %delivery.group,
            attempt = delivery.attempt,
            trace_id = parent.as_ref().map(|p| p.trace_id().to_string()),
            parent_span_id = parent.as_ref().map(|p| p.span_id().to_string()),
            outcome = tracing::field::Empty,
        );
        // The producer's span is the parent, whatever span the runtime polls in.
        trace_context::adopt(&span, headers);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use courier_core::Message;
    use tower::ServiceExt;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

    use super::*;
    use crate::{Delivery, Reject, TRACEPARENT};

    type Fields = Arc<Mutex<BTreeMap<String, String>>>;

    /// Collects the fields of `courier.consume` spans, as given and as recorded later.
    struct Capture(Fields);

    struct Visitor<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: LayerContext<'_, S>) {
            if attrs.metadata().name() == "courier.consume" {
                attrs.record(&mut Visitor(&mut self.0.lock().unwrap()));
            }
        }

        fn on_record(&self, _: &Id, values: &Record<'_>, _: LayerContext<'_, S>) {
            values.record(&mut Visitor(&mut self.0.lock().unwrap()));
        }
    }

    #[tokio::test]
    async fn the_span_continues_the_producers_trace_and_records_the_outcome() {
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(Capture(fields.clone()));
        let _default = tracing::subscriber::set_default(subscriber);

        let message = Message::new("orders", "x").with_header(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let delivery = Delivery::new(message.clone(), "billing").with_attempt(2);
        let handler =
            tower::service_fn(|_: Delivery| async { Err::<(), _>(Reject::new("malformed")) });
        assert!(
            TraceLayer::new()
                .layer(handler)
                .oneshot(delivery)
                .await
                .is_err()
        );

        let fields = fields.lock().unwrap();
        assert_eq!(fields["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(fields["parent_span_id"], "00f067aa0ba902b7");
        assert_eq!(fields["message.id"], message.id.to_string());
        assert_eq!(fields["topic"], "orders");
        assert_eq!(fields["group"], "billing");
        assert_eq!(fields["attempt"], "2");
        assert_eq!(fields["outcome"], "dead_letter");
    }
}
