//! Producer-side tower layers around a publisher (`tower::Service<Message>`), and send helpers.
//!
//! A typical stack, outermost first: [`TracePublish`](trace::TracePublish) (injects `traceparent`),
//! [`FailureFallback`](fallback::FailureFallback) (applications sending directly; the relay keeps
//! its own failure table), the retry of [`SendRetryLayer`](retry::SendRetryLayer),
//! [`SendTimeout`](crate::SendTimeout), [`RequireSendOk`](status::RequireSendOk), then the broker
//! client.
//!
//! Each layer also publishes batches (`courier_core::batch::PublishBatch`, what the relay's
//! `Relay::batch_builder` calls) with the same meaning per message: the status check applies to
//! each outcome, a retry sends again only the failed messages, the trace context goes into each.

pub(crate) mod batch;
#[cfg(feature = "postgres")]
pub(crate) mod fallback;
pub(crate) mod oneway;
pub(crate) mod retry;
pub(crate) mod send;
pub(crate) mod status;
pub(crate) mod trace;
