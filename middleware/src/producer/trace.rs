//! Producer tracing (safeguards L1, L4): a span per send and the W3C `traceparent` header.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use courier_core::Message;
use courier_core::batch::{BatchFuture, PublishBatch};
use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use courier_core::trace_context;

#[cfg(test)]
use crate::{TRACEPARENT, TraceParent};

/// Runs each send in a `courier.publish` span (message id, topic, key, attempts, trace id) and
/// writes the span's W3C trace context into the message's `traceparent` with OpenTelemetry's
/// propagator ([`courier_core::trace_context`]), so the consumer's span becomes its child. The
/// span's parent is the message's own `traceparent` when it carries one (the relay's
/// `outbox.publish`), else the current span. Without an OpenTelemetry layer the message still leaves with a
/// `traceparent`: a child of the one it carried (same trace, new span id), or a new trace. Logs
/// the result of every send.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use courier_middleware::{TracePublishLayer, TraceParent};
/// use courier_core::Message;
/// use tower::{Layer, ServiceExt};
///
/// let broker = tower::service_fn(|message: Message| async move {
///     Ok::<_, tower::BoxError>(message.headers["traceparent"].clone())
/// });
/// let header = TracePublishLayer::new().layer(broker).oneshot(Message::new("t", "x")).await.unwrap();
/// assert!(TraceParent::parse(&header).is_some());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TracePublish<S> {
    inner: S,
}

impl<S> TracePublish<S> {
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

impl<S> Service<Message> for TracePublish<S>
where
    S: Service<Message>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut message: Message) -> Self::Future {
        let span = inject(&mut message);
        let future = span.in_scope(|| self.inner.call(message));
        ResponseFuture {
            inner: future.instrument(span),
        }
    }
}

/// Opens this send's `courier.publish` span and writes its trace context into `message`.
fn inject(message: &mut Message) -> tracing::Span {
    let span = tracing::info_span!(
        "courier.publish",
        message.id = %message.id,
        topic = %message.topic,
        key = message.key.as_deref(),
        attempts = message.attempts,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // The parent is the trace the message carries: the relay stamps each row's `outbox.publish`
    // span into the message it hands over, and the send runs in the relay's `outbox.batch` span,
    // which belongs to no message's trace. A message without a trace (one a handler creates) gets
    // the span the send runs in.
    trace_context::adopt(&span, &message.headers);
    if !trace_context::stamp(&span, &mut message.headers) {
        trace_context::hop(&mut message.headers);
    }
    if let Some(sent) = trace_context::span_context(&message.headers) {
        span.record("trace_id", sent.trace_id().to_string());
        span.record("span_id", sent.span_id().to_string());
    }
    span
}

/// Each message of a batch gets its own span and trace context, in which its outcome is logged.
impl<S: PublishBatch> PublishBatch for TracePublish<S> {
    type Response = S::Response;

    fn publish_batch(&mut self, mut messages: Vec<Message>) -> BatchFuture<S::Response> {
        let spans: Vec<tracing::Span> = messages.iter_mut().map(inject).collect();
        let call = self.inner.publish_batch(messages);
        Box::pin(async move {
            let outcomes = call.await;
            for (outcome, span) in outcomes.iter().zip(&spans) {
                let _entered = span.enter();
                match outcome {
                    Ok(_) => tracing::debug!("sent"),
                    Err(error) => tracing::warn!(%error, "send failed"),
                }
            }
            outcomes
        })
    }
}

pin_project! {
    /// The response future of [`TracePublish`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let result = match inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result.map_err(Into::into),
        };
        let _entered = inner.span().enter();
        match &result {
            Ok(_) => tracing::debug!("sent"),
            Err(error) => tracing::warn!(%error, "send failed"),
        }
        Poll::Ready(result)
    }
}

/// Applies [`TracePublish`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TracePublishLayer {
    _private: (),
}

impl TracePublishLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for TracePublishLayer {
    type Service = TracePublish<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracePublish::new(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;
    use tower_test::mock;

    #[tokio::test]
    async fn an_existing_trace_is_continued_with_a_new_span_id() {
        let (service, mut handle) = mock::pair::<Message, ()>();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let message = Message::new("t", "x").with_header(TRACEPARENT, parent);
        let call = tokio::spawn(TracePublish::new(service).oneshot(message));
        let (sent, respond) = handle.next_request().await.unwrap();
        respond.send_response(());
        call.await.unwrap().unwrap();
        let sent = TraceParent::parse(&sent.headers[TRACEPARENT]).unwrap();
        assert_eq!(sent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(sent.span_id(), "00f067aa0ba902b7");
    }
}
