//! Marker errors a publisher wraps its failures in, so that the relay and the middleware can
//! tell what kind of failure they hold without knowing the broker.

use std::error::Error as StdError;
use std::fmt;

/// What a publisher's error is boxed as (tower's `BoxError`).
type BoxError = Box<dyn StdError + Send + Sync>;

/// Marks a publish error as permanent: the relay moves the message to the failure table at once
/// instead of retrying it (for example, the broker rejected it as malformed or the topic does not
/// exist and never will).
///
/// The relay looks for `Permanent` anywhere in the error's source chain.
///
/// ```
/// use courier_core::Permanent;
///
/// let error: Box<dyn std::error::Error + Send + Sync> = Box::new(Permanent::new("topic `orders` does not exist"));
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

/// Marks a publish error as the broker's, not the message's: the broker cannot be reached
/// (connection refused, connection lost, no answer to a whole request), so every message would
/// fail the same way.
///
/// The outbox relay counts no attempt for such a failure and puts the batch back untouched. It
/// opens its circuit instead: it stops publishing, sends one message at growing intervals (capped
/// at about a second) to probe the broker, and resumes full batches as soon as a probe gets any
/// answer from the broker. An outage therefore never moves messages to the failure table, and the
/// backlog goes out within about a second of the broker's return (`courier_outbox::Relay::circuit`).
///
/// Wrap only what is a property of the broker. A refusal of one message (too large, invalid) is
/// [`Permanent`]; a status the broker answered (for example a disk flush timeout) is an ordinary
/// retryable error, since the broker did answer. The relay looks for the marker anywhere in the
/// error's source chain; when the chain also holds [`Permanent`], the outer one decides.
///
/// ```
/// use courier_core::{Permanent, Unavailable};
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let error: Box<dyn std::error::Error + Send + Sync> = Box::new(Unavailable::new(refused));
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
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Unavailable>() {
                return true;
            }
            next = error.source();
        }
        false
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
