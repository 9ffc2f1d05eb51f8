//! Reading the outbox's columns back. Topics, keys and tags are in `_bin` collations (compared
//! byte for byte, as on the other stores), which MySQL reports as binary columns that sqlx will
//! not decode as `String`: they are read as bytes and checked to be UTF-8. Headers are JSON text.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::mysql::MySqlRow;

fn decode_error(error: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(error))
}

/// A text column of a `_bin` collation.
pub(super) fn text(row: &MySqlRow, column: &str) -> sqlx::Result<String> {
    let bytes: Vec<u8> = row.try_get(column)?;
    String::from_utf8(bytes).map_err(decode_error)
}

/// A nullable text column of a `_bin` collation.
pub(super) fn optional_text(row: &MySqlRow, column: &str) -> sqlx::Result<Option<String>> {
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    bytes
        .map(|bytes| String::from_utf8(bytes).map_err(decode_error))
        .transpose()
}

/// The `headers` column: a JSON object of strings.
pub(super) fn headers(row: &MySqlRow) -> sqlx::Result<BTreeMap<String, String>> {
    let headers: String = row.try_get("headers")?;
    serde_json::from_str(&headers).map_err(decode_error)
}

/// The `attempts` column (an `INT`).
pub(super) fn attempts(row: &MySqlRow) -> sqlx::Result<u32> {
    let attempts: i32 = row.try_get("attempts")?;
    Ok(u32::try_from(attempts.max(0)).unwrap_or(u32::MAX))
}
