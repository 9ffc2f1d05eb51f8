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
