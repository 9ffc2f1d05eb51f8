//! What the relay publishes through: any `tower::Service<Message>`.

use std::error::Error as StdError;
use std::fmt;

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

/// Marks a publish error as permanent: the relay moves the message to the failure table at once
/// instead of retrying it (for example, the broker rejected it as malformed or the topic does not
/// exist and never will).
///
/// The relay looks for `Permanent` anywhere in the error's source chain.
///
/// ```
/// use courier_outbox::Permanent;
///
/// let error: tower::BoxError = Box::new(Permanent::new("topic `orders` does not exist"));
/// assert!(Permanent::is_permanent(error.as_ref()));
/// ```
#[derive(Debug)]
pub struct Permanent {
    source: BoxError,
}

impl Permanent {
    /// Wraps `source` as a permanent failure.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }

    /// Whether `error` or any error in its source chain is [`Permanent`].
    pub fn is_permanent(error: &(dyn StdError + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Permanent>() {
                return true;
            }
            next = error.source();
        }
        false
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "permanent failure: {}", self.source)
    }
}

impl StdError for Permanent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}
