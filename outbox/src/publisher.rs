//! What the relay publishes through: any `tower::Service<Message>`.

use tower::{BoxError, Service};

use crate::Message;

/// A service the relay hands each message to; `Ok` means the broker has it.
///
/// Implemented for every cloneable `tower::Service<Message>` whose error converts into a
/// [`BoxError`], so producer middleware (timeouts, retries, status checks, tracing) composes around a
/// broker client with ordinary tower layers. The relay clones the service once per ordering key in
/// a batch and drives the clones concurrently.
///
/// # Examples
///
/// ```
/// use courier_outbox::{Message, Publisher};
/// use tower::service_fn;
///
/// let publisher = service_fn(|message: Message| async move {
///     println!("publishing {} to {}", message.id, message.topic);
///     Ok::<_, tower::BoxError>(())
/// });
/// fn assert_publisher(_: impl Publisher) {}
/// assert_publisher(publisher);
/// ```
pub trait Publisher:
    Service<Message, Response: Send, Error: Into<BoxError>, Future: Send> + Clone + Send + 'static
{
}

impl<S> Publisher for S where
    S: Service<Message, Response: Send, Error: Into<BoxError>, Future: Send>
        + Clone
        + Send
        + 'static
{
}

pub use courier_core::Permanent;
