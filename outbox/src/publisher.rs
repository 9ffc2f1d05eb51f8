//! What the relay publishes through: any `tower::Service<Message>`, and the two marker errors
//! a publisher uses to tell the relay what a failure means.
//!
//! | the error carries | meaning | the relay |
//! |---|---|---|
//! | nothing | this publish failed; another try may pass | counts an attempt, retries after the backoff |
//! | [`Permanent`] | the broker refuses this message for good | moves it to the failure table at once |
//! | [`Unavailable`] | the broker itself cannot be reached | counts nothing, pauses and probes the broker |
//!
//! The relay looks for the markers anywhere in the error's source chain, so layers that wrap
//! errors (retries, timeouts, tracing) keep them; when a chain holds both, the outer one decides.

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

pub use courier_core::{Permanent, Unavailable};

/// The marker that decides how the relay treats a publish error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    Permanent,
    Unavailable,
}

impl Marker {
    /// The outermost marker in `error`'s source chain: the layer closest to the relay knows best
    /// (a retry layer that gave up on an unavailable broker may call the message permanent).
    pub(crate) fn of(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Permanent>() {
                return Some(Self::Permanent);
            }
            if error.is::<Unavailable>() {
                return Some(Self::Unavailable);
            }
            next = error.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_marker_decides() {
        let unavailable_inside = Permanent::new(Unavailable::new("refused"));
        assert_eq!(Marker::of(&unavailable_inside), Some(Marker::Permanent));
        let permanent_inside = Unavailable::new(Permanent::new("too large"));
        assert_eq!(Marker::of(&permanent_inside), Some(Marker::Unavailable));
        let plain = std::io::Error::other("flaky");
        assert_eq!(Marker::of(&plain), None);
    }
}
