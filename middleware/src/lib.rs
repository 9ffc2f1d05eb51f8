//! Tower layers for reliable producers and consumers.
//!
//! Work in progress: see issue 4.

#![forbid(unsafe_code)]

mod boxed;
mod consumer;
mod delivery;
mod error;
#[cfg(feature = "postgres")]
mod idempotency;
#[cfg(feature = "postgres")]
mod inbox;
mod memory;
mod producer;
mod runtime;
mod source;
mod trace_context;
#[cfg(feature = "postgres")]
mod tx;

pub use consumer::catch_panic::{CatchPanic, CatchPanicLayer};
pub use consumer::metrics::{ConsumeMetrics, ConsumeMetricsLayer};
pub use consumer::retry::{LocalRetry, LocalRetryLayer, LocalRetryPolicy};
pub use consumer::timeout::{ConsumeTimeout, ConsumeTimeoutLayer, DEFAULT_CONSUME_TIMEOUT};
pub use consumer::trace::{Trace, TraceLayer};
pub use delivery::{AsDelivery, Delivery};
pub use error::{Disposition, Elapsed, Panicked, Reject, Retry};
#[cfg(feature = "postgres")]
pub use idempotency::{
    DEFAULT_IDEMPOTENCY_WINDOW, Handled, Idempotency, IdempotencyKey, IdempotencyLayer,
};
#[cfg(feature = "postgres")]
pub use inbox::{Inbox, InboxDeadLetter, InboxStore, InboxWorker, Stored};
pub use memory::{MemoryReceipt, MemorySource};
#[cfg(feature = "postgres")]
pub use producer::fallback::{FailureFallback, FailureFallbackLayer, NotParked, Parked};
pub use producer::oneway::{OneWay, OneWayLayer, OneWayRefused};
pub use producer::retry::SendRetryLayer;
pub use producer::send::{Producer, SendHandle};
pub use producer::status::{
    HasSendStatus, NotSendOk, RequireSendOk, RequireSendOkLayer, SendStatus,
};
pub use producer::timeout::{DEFAULT_SEND_TIMEOUT, SendTimeout, SendTimeoutLayer};
pub use producer::trace::{TracePublish, TracePublishLayer};
pub use runtime::{Consumer, ConsumerBuilder, DEFAULT_CONCURRENCY, DEFAULT_MAX_DELIVERIES};
pub use source::{ConsumeModel, DeliverySource, NackOutcome, Pulled};
pub use tower::BoxError;
pub use trace_context::{TRACEPARENT, TraceParent};
#[cfg(feature = "postgres")]
pub use tx::{PgTx, PgTxGuard, TxDelivery};

/// The response futures of the layers. `SendTimeout` shares `ConsumeTimeoutFuture`, the send retry
/// shares `LocalRetryFuture`.
pub mod future {
    pub use crate::boxed::BoxResponseFuture;
    pub use crate::consumer::catch_panic::future::ResponseFuture as CatchPanicFuture;
    pub use crate::consumer::metrics::future::ResponseFuture as ConsumeMetricsFuture;
    pub use crate::consumer::retry::future::ResponseFuture as LocalRetryFuture;
    pub use crate::consumer::timeout::future::ResponseFuture as ConsumeTimeoutFuture;
    pub use crate::consumer::trace::future::ResponseFuture as TraceFuture;
    #[cfg(feature = "postgres")]
    pub use crate::idempotency::future::ResponseFuture as IdempotencyFuture;
    #[cfg(feature = "postgres")]
    pub use crate::inbox::future::ResponseFuture as InboxStoreFuture;
    pub use crate::producer::status::ResponseFuture as RequireSendOkFuture;
    pub use crate::producer::trace::ResponseFuture as TracePublishFuture;
}
