//! Handler outcomes: marker errors that say what should happen to a failed delivery.
//!
//! Any error a handler returns asks for a redelivery; wrap it in [`Reject`] to dead-letter at once,
//! or in [`Retry`] to choose the redelivery delay. [`Disposition::of_error`] looks for the markers
//! anywhere in the source chain, so they survive wrapping by other layers.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use courier_core::Permanent;
use tower::BoxError;

/// What the runtime does with a delivery once the handler stack has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// The handler succeeded: acknowledge.
    Ack,
    /// The handler failed in a way that may pass: ask the broker to deliver it again, after `after`
    /// when given (otherwise the broker's own delay).
    Redeliver {
        /// The delay the handler asked for.
        after: Option<Duration>,
    },
    /// The handler failed for good: dead-letter at once.
    DeadLetter,
}

impl Disposition {
    /// The disposition of a handler result: `Ok` acks, an error is classified by
    /// [`of_error`](Self::of_error). There is no error that acks (safeguard C1).
    pub fn of<T, E>(result: &Result<T, E>) -> Self
    where
        E: AsRef<dyn StdError + Send + Sync + 'static>,
    {
        match result {
            Ok(_) => Self::Ack,
            Err(error) => Self::of_error(error.as_ref()),
        }
    }

    /// Classifies an error: the first [`Reject`] (or `courier_core::Permanent`), [`Retry`] or
    /// [`BatchFailed`](crate::BatchFailed) in the source chain decides; any other error redelivers
    /// with the broker's delay.
    ///
    /// ```
    /// use courier_middleware::{Disposition, Reject, Retry};
    /// use std::time::Duration;
    ///
    /// let plain: tower::BoxError = "database is down".into();
    /// assert_eq!(Disposition::of_error(plain.as_ref()), Disposition::Redeliver { after: None });
    ///
    /// let later: tower::BoxError = Retry::after(Duration::from_secs(30), "rate limited").into();
    /// assert_eq!(
    ///     Disposition::of_error(later.as_ref()),
    ///     Disposition::Redeliver { after: Some(Duration::from_secs(30)) }
    /// );
    ///
    /// let bad: tower::BoxError = Reject::new("not valid JSON").into();
    /// assert_eq!(Disposition::of_error(bad.as_ref()), Disposition::DeadLetter);
    /// ```
    pub fn of_error(error: &(dyn StdError + Send + Sync + 'static)) -> Self {
        let mut next: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(error) = next {
            if error.is::<Reject>() || error.is::<Permanent>() {
                return Self::DeadLetter;
            }
            if let Some(retry) = error.downcast_ref::<Retry>() {
                return Self::Redeliver { after: retry.after };
            }
            if let Some(failed) = error.downcast_ref::<crate::BatchFailed>() {
                return failed.disposition();
            }
            next = error.source();
        }
        Self::Redeliver { after: None }
    }

    /// A short lower-case label for logs and metrics: `ack`, `redeliver` or `dead_letter`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Redeliver { .. } => "redeliver",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// A retryable failure with an optional redelivery delay (RocketMQ's `RECONSUME_LATER`).
///
/// Plain errors are retryable already; use `Retry` to choose the delay.
#[derive(Debug)]
pub struct Retry {
    after: Option<Duration>,
    source: BoxError,
}

impl Retry {
    /// Redeliver with the broker's delay.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            after: None,
            source: source.into(),
        }
    }

    /// Redeliver no earlier than `delay` from now.
    pub fn after(delay: Duration, source: impl Into<BoxError>) -> Self {
        Self {
            after: Some(delay),
            source: source.into(),
        }
    }

    /// The delay asked for, if any.
    pub fn delay(&self) -> Option<Duration> {
        self.after
    }
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.after {
            Some(after) => write!(f, "retry after {after:?}: {}", self.source),
            None => write!(f, "retry: {}", self.source),
        }
    }
}

impl StdError for Retry {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// A permanent failure: the message can never be handled (malformed, refers to nothing); it is
/// dead-lettered at once instead of being redelivered.
#[derive(Debug)]
pub struct Reject {
    source: BoxError,
}

impl Reject {
    /// Wraps `source` as a permanent failure.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected: {}", self.source)
    }
}

impl StdError for Reject {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The handler panicked; the panic was caught by [`CatchPanic`](crate::CatchPanic) and becomes a
/// redelivery (safeguard C2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    pub(crate) fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "a non-string panic payload".to_owned()
        };
        Self { message }
    }

    /// The panic message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the handler panicked: {}", self.message)
    }
}

impl StdError for Panicked {}

/// The handler did not finish within its consume timeout (safeguard C3); the delivery is
/// redelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    after: Duration,
}

impl Elapsed {
    pub(crate) fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The timeout that passed.
    pub fn timeout(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the handler did not finish within {:?}", self.after)
    }
}

impl StdError for Elapsed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_through_wrappers() {
        let wrapped: BoxError = Retry::new(Reject::new("bad")).into();
        // The outermost marker decides.
        assert_eq!(
            Disposition::of_error(wrapped.as_ref()),
            Disposition::Redeliver { after: None }
        );
        let permanent: BoxError = Permanent::new("gone").into();
        assert_eq!(
            Disposition::of_error(permanent.as_ref()),
            Disposition::DeadLetter
        );
        let ok: Result<(), BoxError> = Ok(());
        assert_eq!(Disposition::of(&ok), Disposition::Ack);
    }

    #[test]
    fn panic_payloads_become_messages() {
        let boxed: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(Panicked::from_payload(boxed.as_ref()).message(), "boom");
        let boxed: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(Panicked::from_payload(boxed.as_ref()).message(), "bang");
    }
}
