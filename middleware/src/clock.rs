//! Times as SQLite stores them, in the encoding shared with the outbox (`courier_core::time`).

pub(crate) use courier_core::time::{micros_ago, micros_from_now, now_micros};

/// A stored timestamp back as a `DateTime`; out-of-range values decode as an error.
pub(crate) fn from_micros(micros: i64) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    courier_core::time::from_micros(micros).map_err(|error| sqlx::Error::Decode(Box::new(error)))
}
