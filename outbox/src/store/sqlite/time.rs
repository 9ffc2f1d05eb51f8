//! Timestamps on SQLite, in the encoding shared with the middleware (`courier_core::time`).

pub(super) use courier_core::time::{micros, now_micros, to_micros};

/// A stored timestamp back as a `DateTime`; out-of-range values (never written by the outbox)
/// decode as an error rather than a wrong date.
pub(super) fn from_micros(micros: i64) -> sqlx::Result<chrono::DateTime<chrono::Utc>> {
    courier_core::time::from_micros(micros).map_err(|error| sqlx::Error::Decode(Box::new(error)))
}
