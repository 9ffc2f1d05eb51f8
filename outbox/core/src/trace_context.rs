//! The W3C trace context a message carries in its headers (`traceparent`, `tracestate`), read and
//! written with OpenTelemetry's propagator rather than by hand.
//!
//! Each hop of a message, the enqueue into the outbox, the relay's publish, the producer's send
//! and the consumer's handler, runs in a `tracing` span that [`adopt`]s the message's context as
//! its parent and [`stamp`]s its own context back into the headers, so the hops form one trace in
//! any OpenTelemetry backend. That needs a
//! [`tracing_opentelemetry`](https://docs.rs/tracing-opentelemetry) layer in the application's
//! subscriber; without one the spans have no OpenTelemetry context, [`stamp`] writes nothing and
//! the header travels on as it came ([`hop`] makes one where a hop must carry it).
//!
//! ```
//! use std::collections::BTreeMap;
//! use courier_core::trace_context::{self, TRACEPARENT};
//! use opentelemetry::trace::TraceContextExt;
//!
//! let mut headers = BTreeMap::new();
//! headers.insert(TRACEPARENT.to_owned(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());
//! let parent = trace_context::extract(&headers);
//! assert_eq!(parent.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//!
//! // No OpenTelemetry layer here: the next hop gets a new span id in the same trace.
//! trace_context::hop(&mut headers);
//! let next = trace_context::span_context(&headers).unwrap();
//! assert_eq!(next.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_ne!(next.span_id().to_string(), "00f067aa0ba902b7");
//! ```

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The name of the W3C trace-context header.
///
/// ```
/// assert_eq!(courier_core::trace_context::TRACEPARENT, "traceparent");
/// ```
pub const TRACEPARENT: &str = "traceparent";

struct Reader<'a>(&'a BTreeMap<String, String>);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct Writer<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Writer<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// The context carried by `headers`: a remote parent when they hold a valid `traceparent`, an
/// empty context otherwise (a malformed header is ignored, never an error: tracing must not
/// stop a message).
///
/// ```
/// use opentelemetry::trace::TraceContextExt;
/// let empty = courier_core::trace_context::extract(&Default::default());
/// assert!(!empty.span().span_context().is_valid());
/// ```
pub fn extract(headers: &BTreeMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(&Reader(headers))
}

/// The valid span context carried by `headers`, if any.
///
/// ```
/// assert!(courier_core::trace_context::span_context(&Default::default()).is_none());
/// ```
pub fn span_context(headers: &BTreeMap<String, String>) -> Option<SpanContext> {
    let context = extract(headers);
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Writes the span of `context` into `headers` (`traceparent`, and `tracestate` when it has one);
/// `false`, with the headers untouched, when `context` has no valid span.
///
/// ```
/// let mut headers = Default::default();
/// assert!(!courier_core::trace_context::inject(&opentelemetry::Context::new(), &mut headers));
/// assert!(headers.is_empty());
/// ```
pub fn inject(context: &Context, headers: &mut BTreeMap<String, String>) -> bool {
    if !context.span().span_context().is_valid() {
        return false;
    }
    TraceContextPropagator::new().inject_context(context, &mut Writer(headers));
    true
}

/// Makes `span` a child of the context in `headers`, when they carry one and `span` has not
/// started yet. Call it right after creating the span.
///
/// ```
/// let span = tracing::info_span!("courier.consume");
/// // No OpenTelemetry layer, no header: nothing to adopt.
/// assert!(!courier_core::trace_context::adopt(&span, &Default::default()));
/// ```
pub fn adopt(span: &tracing::Span, headers: &BTreeMap<String, String>) -> bool {
    let parent = extract(headers);
    parent.span().span_context().is_valid() && span.set_parent(parent).is_ok()
}

/// Writes `span`'s own context into `headers`, so the next hop is its child; `false` when
/// `span` has no OpenTelemetry context (no layer installed, or the span is disabled).
///
/// ```
/// let mut headers = Default::default();
/// assert!(!courier_core::trace_context::stamp(&tracing::Span::none(), &mut headers));
/// ```
pub fn stamp(span: &tracing::Span, headers: &mut BTreeMap<String, String>) -> bool {
    inject(&span.context(), headers)
}

/// Whether `span` has an OpenTelemetry context (an OpenTelemetry layer is installed and the span
/// is enabled). Starts the span's OpenTelemetry side, so [`adopt`] first.
///
/// ```
/// assert!(!courier_core::trace_context::is_traced(&tracing::info_span!("no layer")));
/// ```
pub fn is_traced(span: &tracing::Span) -> bool {
    span.context().span().span_context().is_valid()
}

/// Without OpenTelemetry, what a hop passes on: the same trace with a new span id, or a new
/// sampled trace when `headers` carry none. Log lines can still be joined by trace id.
///
/// ```
/// let mut headers = Default::default();
/// courier_core::trace_context::hop(&mut headers);
/// assert!(courier_core::trace_context::span_context(&headers).is_some());
/// ```
pub fn hop(headers: &mut BTreeMap<String, String>) {
    let ids = RandomIdGenerator::default();
    let next = match span_context(headers) {
        Some(parent) => SpanContext::new(
            parent.trace_id(),
            ids.new_span_id(),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        ),
        None => SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
    };
    inject(&Context::new().with_remote_span_context(next), headers);
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn a_span_adopts_the_header_and_stamps_its_own_context() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let mut headers = BTreeMap::new();
        headers.insert(
            TRACEPARENT.to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("hop");
            assert!(adopt(&span, &headers));
            assert!(stamp(&span, &mut headers));
        });
        let stamped = span_context(&headers).unwrap();
        assert_eq!(
            stamped.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].span_context.span_id(), stamped.span_id());
        assert_eq!(spans[0].parent_span_id.to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            let headers = BTreeMap::from([(TRACEPARENT.to_owned(), bad.to_owned())]);
            assert!(span_context(&headers).is_none(), "{bad}");
        }
    }
}
