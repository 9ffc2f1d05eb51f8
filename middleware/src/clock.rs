//! Times as SQLite stores them: INTEGER microseconds since the Unix epoch, UTC. SQLite's own clock
//! has millisecond resolution at best, so "now" comes from here and is bound as a parameter.

use std::time::Duration;

use chrono::{DateTime, Utc};

pub(crate) fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

pub(crate) fn micros_ago(duration: Duration) -> i64 {
    now_micros().saturating_sub(micros(duration))
}

pub(crate) fn micros_from_now(duration: Duration) -> i64 {
    now_micros().saturating_add(micros(duration))
}

pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp out of range: {micros} µs").into()))
}
