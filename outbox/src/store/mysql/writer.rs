//! The writer's SQL on MySQL: one `INSERT`, or one `INSERT … SELECT FROM JSON_TABLE` for a batch
//! (MySQL has no arrays, and a multi-row `VALUES` would hit the 65,535-placeholder limit; a JSON
//! document carries any number of rows in one bound parameter, as on SQLite).
//!
//! Due times are computed by the server (`UTC_TIMESTAMP(6)`), the clock the relay compares with.

use sqlx::{Executor, MySql};

use crate::Message;
use crate::writer::delay_micros;

const INSERT_ONE: &str = "\
INSERT INTO outbox_messages (id, topic, `key`, tag, headers, payload, created_at, available_at)
VALUES (?, ?, ?, ?, ?, ?, ?, COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND))";

/// Ids and payloads travel hex-encoded in the JSON document; `ORDER BY ord` keeps the slice order
/// in the sequence numbers. Both MySQL 8 and MariaDB 10.6+ have `JSON_TABLE`.
const INSERT_MANY: &str = "\
INSERT INTO outbox_messages (id, topic, `key`, tag, headers, payload, created_at, available_at)
SELECT UNHEX(j.id), j.topic, j.k, j.tag, j.headers, UNHEX(j.payload), j.created_at,
       COALESCE(j.available_at, UTC_TIMESTAMP(6) + INTERVAL j.delay_us MICROSECOND)
FROM JSON_TABLE(?, '$[*]' COLUMNS (
         ord          FOR ORDINALITY,
         id           VARCHAR(32)   PATH '$.id',
         topic        VARCHAR(255)  PATH '$.topic',
         k            VARCHAR(1024) PATH '$.key',
         tag          VARCHAR(1024) PATH '$.tag',
         headers      LONGTEXT      PATH '$.headers',
         payload      LONGTEXT      PATH '$.payload',
         created_at   DATETIME(6)   PATH '$.created_at',
         available_at DATETIME(6)   PATH '$.available_at',
         delay_us     BIGINT        PATH '$.delay_us')) AS j
ORDER BY j.ord";

/// A timestamp as `JSON_TABLE` reads it into a `DATETIME(6)` column.
fn datetime(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// The headers as the JSON text the `headers` column holds.
pub(super) fn headers_json(message: &Message) -> String {
    serde_json::to_string(&message.headers).unwrap_or_else(|_| "{}".to_owned())
}

pub(super) async fn insert_one<'e, E>(executor: E, message: &Message) -> sqlx::Result<()>
where
    E: Executor<'e, Database = MySql>,
{
    sqlx::query(INSERT_ONE)
        .bind(message.id)
        .bind(&message.topic)
        .bind(message.key.as_deref())
        .bind(message.tag.as_deref())
        .bind(headers_json(message))
        .bind(message.payload.as_ref())
        .bind(message.created_at)
        .bind(message.available_at)
        .bind(delay_micros(message).unwrap_or(0))
        .execute(executor)
        .await?;
    Ok(())
}

pub(super) async fn insert_many<'e, E>(executor: E, messages: &[Message]) -> sqlx::Result<u64>
where
    E: Executor<'e, Database = MySql>,
{
    let rows: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": hex::encode(m.id.as_bytes()),
                "topic": m.topic,
                "key": m.key,
                "tag": m.tag,
                "headers": headers_json(m),
                "payload": hex::encode(&m.payload),
                "created_at": datetime(m.created_at),
                "available_at": m.available_at.map(datetime),
                "delay_us": delay_micros(m).unwrap_or(0),
            })
        })
        .collect();
    let document = serde_json::Value::Array(rows).to_string();
    let done = sqlx::query(INSERT_MANY)
        .bind(document)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}
