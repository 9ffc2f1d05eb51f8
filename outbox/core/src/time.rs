//! Timestamps as the SQLite stores keep them: INTEGER microseconds since the Unix epoch, UTC.
//!
//! SQLite has no timestamp type and its own clock has millisecond resolution at best, so the
//! outbox and the middleware take "now" from here and bind it as a parameter; both must agree on
//! the encoding because they read each other's rows (the inbox stores outbox messages).
//!
//! ```
//! use std::time::Duration;
//! use courier_core::time;
//!
//! let now = time::now_micros();
//! assert_eq!(time::from_micros(now).unwrap().timestamp_micros(), now);
//! assert!(time::micros_from_now(Duration::from_secs(1)) > now);
//! assert_eq!(time::micros(Duration::from_millis(2)), 2_000);
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A stored timestamp that no `DateTime<Utc>` can hold; courier never writes one, so the row was
/// changed by something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {0} µs since the Unix epoch is out of range")]
pub struct OutOfRange(pub i64);

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// `at` in microseconds since the Unix epoch.
pub fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// A stored timestamp back as a `DateTime`.
///
/// # Errors
///
/// [`OutOfRange`] when `micros` is outside what `DateTime<Utc>` represents: decoding fails
/// rather than inventing a date.
pub fn from_micros(micros: i64) -> Result<DateTime<Utc>, OutOfRange> {
    DateTime::from_timestamp_micros(micros).ok_or(OutOfRange(micros))
}

/// `duration` in microseconds, saturating at `i64::MAX`.
pub fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// `duration` before now, in microseconds.
pub fn micros_ago(duration: Duration) -> i64 {
    now_micros().saturating_sub(micros(duration))
}

/// `duration` after now, in microseconds.
pub fn micros_from_now(duration: Duration) -> i64 {
    now_micros().saturating_add(micros(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_timestamps_are_refused() {
        assert_eq!(from_micros(i64::MAX), Err(OutOfRange(i64::MAX)));
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(micros(Duration::MAX), i64::MAX);
        assert_eq!(micros_from_now(Duration::MAX), i64::MAX);
    }
}
