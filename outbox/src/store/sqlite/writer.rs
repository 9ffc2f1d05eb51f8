//! The writer's SQL on SQLite: one `INSERT`, or one `INSERT … SELECT FROM json_each` for a batch
//! (SQLite has no arrays; a JSON document carries any number of rows in one bound parameter).

use sqlx::types::Json;
use sqlx::{Executor, Sqlite};

use super::time::{now_micros, to_micros};
use crate::Message;
use crate::writer::delay_micros;

const INSERT_ONE: &str = "\
INSERT INTO outbox_messages (id, topic, key, tag, headers, payload, created_at, available_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Ids and payloads travel hex-encoded in the JSON document; `ORDER BY j.key` (the array index)
/// keeps the slice order in the sequence numbers.
const INSERT_MANY: &str = "\
INSERT INTO outbox_messages (id, topic, key, tag, headers, payload, created_at, available_at)
SELECT unhex(j.value ->> 'id'), j.value ->> 'topic', j.value ->> 'key', j.value ->> 'tag',
       j.value ->> 'headers', unhex(j.value ->> 'payload'), j.value ->> 'created_at',
       j.value ->> 'available_at'
FROM json_each(?1) AS j
ORDER BY j.key";

/// When the message becomes due: its own time, or now plus its delay.
fn available_at(message: &Message, now: i64) -> i64 {
    match message.available_at {
        Some(at) => to_micros(at),
        None => now.saturating_add(delay_micros(message).unwrap_or(0)),
    }
}

pub(super) async fn insert_one<'e, E>(executor: E, message: &Message) -> sqlx::Result<()>
where
    E: Executor<'e, Database = Sqlite>,
{
    sqlx::query(INSERT_ONE)
        .bind(message.id)
        .bind(&message.topic)
        .bind(message.key.as_deref())
        .bind(message.tag.as_deref())
        .bind(Json(&message.headers))
        .bind(message.payload.as_ref())
        .bind(to_micros(message.created_at))
        .bind(available_at(message, now_micros()))
        .execute(executor)
        .await?;
    Ok(())
}

pub(super) async fn insert_many<'e, E>(executor: E, messages: &[Message]) -> sqlx::Result<u64>
where
    E: Executor<'e, Database = Sqlite>,
{
    let now = now_micros();
    let rows: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": hex::encode(m.id.as_bytes()),
                "topic": m.topic,
                "key": m.key,
                "tag": m.tag,
                "headers": serde_json::to_string(&m.headers).unwrap_or_else(|_| "{}".to_owned()),
                "payload": hex::encode(&m.payload),
                "created_at": to_micros(m.created_at),
                "available_at": available_at(m, now),
            })
        })
        .collect();
    let done = sqlx::query(INSERT_MANY)
        .bind(Json(rows))
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}
