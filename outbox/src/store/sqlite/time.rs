//! Timestamps on SQLite: INTEGER microseconds since the Unix epoch, UTC.

use chrono::{DateTime, Utc};

/// Now, in microseconds.
pub(super) fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// `at` in microseconds.
pub(super) fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// A stored timestamp back as a `DateTime`; out-of-range values (never written by the outbox)
/// decode as an error rather than a wrong date.
pub(super) fn from_micros(micros: i64) -> sqlx::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp {micros} µs is out of range").into()))
}

/// A duration in microseconds, saturating.
pub(super) fn micros(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
