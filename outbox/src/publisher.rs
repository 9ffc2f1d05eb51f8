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
/// The relay looks for `Permanent` anywhere in the error's source chain (the outer marker
/// decides when the chain also holds [`Unavailable`]).
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
        Marker::of(error) == Some(Marker::Permanent)
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

/// Marks a publish error as the broker's, not the message's: the broker cannot be reached
/// (connection refused, connection lost, no answer to a whole request), so every message would
/// fail the same way.
///
/// The relay counts no attempt for such a failure and puts the batch back untouched. It opens its
/// circuit instead: it stops publishing, sends one message at growing intervals (capped at about
/// a second) to probe the broker, and resumes full batches as soon as a probe gets any answer
/// from the broker. An outage therefore never moves messages to the failure table, and the
/// backlog goes out within about a second of the broker's return. See
/// [`Relay::circuit`](crate::Relay::circuit).
///
/// Wrap only what is a property of the broker. A refusal of one message (too large, invalid) is
/// [`Permanent`]; a status the broker answered (for example a disk flush timeout) is an ordinary
/// retryable error, since the broker did answer.
///
/// The relay looks for `Unavailable` anywhere in the error's source chain (the outer marker
/// decides when the chain also holds [`Permanent`]).
///
/// ```
/// use courier_outbox::{Permanent, Unavailable};
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let error: tower::BoxError = Box::new(Unavailable::new(refused));
/// assert!(Unavailable::is_unavailable(error.as_ref()));
/// assert!(!Permanent::is_permanent(error.as_ref()));
/// assert_eq!(error.to_string(), "broker unavailable: connection refused");
/// ```
#[derive(Debug)]
pub struct Unavailable {
    source: BoxError,
}

impl Unavailable {
    /// Wraps `source` as a failure of the broker as a whole.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }

    /// Whether `error` or any error in its source chain is [`Unavailable`].
    pub fn is_unavailable(error: &(dyn StdError + 'static)) -> bool {
        Marker::of(error) == Some(Marker::Unavailable)
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "broker unavailable: {}", self.source)
    }
}

impl StdError for Unavailable {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The marker that decides how the relay treats a publish error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    Permanent,
    Unavailable,
}

impl Marker {
    /// The outermost marker in `error`'s source chain: the layer closest to the relay knows best
    /// (a retry layer that gave up on an unavailable broker may call the message permanent).
    pub(crate) fn of(error: &(dyn StdError + 'static)) -> Option<Self> {
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
