//! The writer's SQL on Postgres: one `INSERT`, or one `INSERT … SELECT FROM UNNEST` for a batch.

use sqlx::types::Json;
use sqlx::{Executor, Postgres};

use crate::Message;
use crate::writer::delay_micros;

const INSERT_ONE: &str = "\
INSERT INTO outbox.messages (id, topic, key, tag, headers, payload, created_at, available_at)
VALUES ($1, $2, $3, $4, $5, $6, $7,
        COALESCE($8, now() + COALESCE($9, 0) * interval '1 microsecond'))";

const INSERT_MANY: &str = "\
INSERT INTO outbox.messages (id, topic, key, tag, headers, payload, created_at, available_at)
SELECT id, topic, key, tag, headers, payload, created_at,
       COALESCE(available_at, now() + COALESCE(delay_us, 0) * interval '1 microsecond')
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[],
            $7::timestamptz[], $8::timestamptz[], $9::int8[])
     WITH ORDINALITY AS m(id, topic, key, tag, headers, payload, created_at, available_at, delay_us, ord)
ORDER BY ord";

pub(super) async fn insert_one<'e, E>(executor: E, message: &Message) -> sqlx::Result<()>
where
    E: Executor<'e, Database = Postgres>,
{
    sqlx::query(INSERT_ONE)
        .bind(message.id)
        .bind(&message.topic)
        .bind(message.key.as_deref())
        .bind(message.tag.as_deref())
        .bind(Json(&message.headers))
        .bind(message.payload.as_ref())
        .bind(message.created_at)
        .bind(message.available_at)
        .bind(delay_micros(message))
        .execute(executor)
        .await?;
    Ok(())
}

pub(super) async fn insert_many<'e, E>(executor: E, messages: &[Message]) -> sqlx::Result<u64>
where
    E: Executor<'e, Database = Postgres>,
{
    fn column<'m, T>(messages: &'m [Message], f: impl Fn(&'m Message) -> T) -> Vec<T> {
        messages.iter().map(f).collect()
    }
    let done = sqlx::query(INSERT_MANY)
        .bind(column(messages, |m| m.id))
        .bind(column(messages, |m| m.topic.as_str()))
        .bind(column(messages, |m| m.key.as_deref()))
        .bind(column(messages, |m| m.tag.as_deref()))
        .bind(column(messages, |m| Json(&m.headers)))
        .bind(column(messages, |m| m.payload.as_ref()))
        .bind(column(messages, |m| m.created_at))
        .bind(column(messages, |m| m.available_at))
        .bind(column(messages, delay_micros))
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}
