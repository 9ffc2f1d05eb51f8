//! Consumer-side tower layers around a handler (`tower::Service<Delivery>`).
//!
//! A typical stack, outermost first: [`Trace`](trace::Trace), [`ConsumeMetrics`](metrics::ConsumeMetrics),
//! [`LocalRetry`](retry::LocalRetry), [`CatchPanic`](catch_panic::CatchPanic),
//! [`ConsumeTimeout`](crate::ConsumeTimeout), then the handler (or the idempotency layer and the
//! handler).

pub(crate) mod batch;
pub(crate) mod catch_panic;
pub(crate) mod metrics;
pub(crate) mod retry;
pub(crate) mod trace;
