//! W3C trace context (`traceparent` header) as a value: parsed and written by OpenTelemetry's
//! propagator ([`courier_core::trace_context`]), for code that reads or sets the header itself.

use std::collections::BTreeMap;
use std::fmt;

use courier_core::trace_context::{self, span_context};
use opentelemetry::trace::{SpanContext, TraceContextExt};

/// The name of the W3C trace-context header.
pub const TRACEPARENT: &str = trace_context::TRACEPARENT;

/// A parsed W3C `traceparent` value: `00-<trace id>-<parent span id>-<flags>`.
///
/// ```
/// use courier_middleware::TraceParent;
///
/// let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// let child = parent.child();
/// assert_eq!(child.trace_id(), parent.trace_id());
/// assert_ne!(child.span_id(), parent.span_id());
/// assert!(TraceParent::parse("garbage").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    context: SpanContext,
    trace_id: String,
    span_id: String,
}

impl TraceParent {
    /// Parses a `traceparent`; `None` if it is malformed or all-zero.
    pub fn parse(value: &str) -> Option<Self> {
        Self::from_headers(&BTreeMap::from([(
            TRACEPARENT.to_owned(),
            value.to_owned(),
        )]))
    }

    fn from_headers(headers: &BTreeMap<String, String>) -> Option<Self> {
        let context = span_context(headers)?;
        Some(Self {
            trace_id: context.trace_id().to_string(),
            span_id: context.span_id().to_string(),
            context,
        })
    }

    /// A new trace with random ids, sampled.
    pub fn new_root() -> Self {
        let mut headers = BTreeMap::new();
        trace_context::hop(&mut headers);
        Self::from_headers(&headers).expect("hop writes a valid traceparent")
    }

    /// The same trace with a new span id: what a hop passes on.
    #[must_use]
    pub fn child(&self) -> Self {
        let mut headers = BTreeMap::from([(TRACEPARENT.to_owned(), self.to_string())]);
        trace_context::hop(&mut headers);
        Self::from_headers(&headers).expect("hop writes a valid traceparent")
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The 16-hex-digit span id of the sender.
    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// Whether the sender sampled this trace.
    pub fn sampled(&self) -> bool {
        self.context.is_sampled()
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut headers = BTreeMap::new();
        let context = opentelemetry::Context::new().with_remote_span_context(self.context.clone());
        trace_context::inject(&context, &mut headers);
        f.write_str(headers.get(TRACEPARENT).map_or("", String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_values() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(text).unwrap().to_string(), text);
        // Versions above 00 are read as 00 (W3C: forward compatible), so only bad fields fail.
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        let root = TraceParent::new_root();
        assert!(root.sampled());
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
