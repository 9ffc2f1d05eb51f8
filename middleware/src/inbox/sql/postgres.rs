//! The durable inbox on Postgres (schema `courier_inbox`).

use std::time::Duration;

use courier_core::Message;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Executor, PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use super::{Claimed, InboxSql};
use crate::Delivery;
use crate::inbox::{InboxDeadLetter, Stored};

fn message_of(row: &PgRow) -> Result<Message, sqlx::Error> {
    let Json(headers) = row.try_get("headers")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let mut message =
        Message::new(row.try_get::<String, _>("topic")?, payload).with_id(row.try_get("id")?);
    message.key = row.try_get("key")?;
    message.tag = row.try_get("tag")?;
    message.headers = headers;
    message.created_at = row.try_get("created_at")?;
    Ok(message)
}

impl InboxSql for Postgres {
    async fn inbox_insert<'e, E: Executor<'e, Database = Self>>(
        executor: E,
        delivery: &Delivery,
    ) -> Result<Stored, sqlx::Error> {
        let message = &delivery.message;
        let done = sqlx::query(
            "INSERT INTO courier_inbox.messages
                 (consumer_group, id, topic, key, tag, headers, payload, created_at, queue)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
             WHERE NOT EXISTS (SELECT 1 FROM courier_inbox.dead_letters
                               WHERE consumer_group = $1 AND id = $2)
             ON CONFLICT (consumer_group, id) DO NOTHING",
        )
        .bind(&delivery.group)
        .bind(message.id)
        .bind(&message.topic)
        .bind(&message.key)
        .bind(&message.tag)
        .bind(Json(&message.headers))
        .bind(message.payload.as_ref())
        .bind(message.created_at)
        .bind(&delivery.queue)
        .execute(executor)
        .await?;
        Ok(if done.rows_affected() == 1 {
            Stored::New
        } else {
            Stored::Duplicate
        })
    }

    async fn inbox_insert_pooled(
        pool: &PgPool,
        delivery: &Delivery,
    ) -> Result<Stored, sqlx::Error> {
        Self::inbox_insert(pool, delivery).await
    }

    async fn inbox_claim(
        pool: &PgPool,
        group: &str,
        lease: Duration,
    ) -> Result<Option<Claimed>, sqlx::Error> {
        let row = sqlx::query(
            "UPDATE courier_inbox.messages
             SET attempts = attempts + 1, available_at = now() + make_interval(secs => $2)
             WHERE seq = (SELECT seq FROM courier_inbox.messages
                          WHERE consumer_group = $1 AND done_at IS NULL AND available_at <= now()
                          ORDER BY available_at, seq
                          LIMIT 1
                          FOR UPDATE SKIP LOCKED)
             RETURNING *",
        )
        .bind(group)
        .bind(lease.as_secs_f64())
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let attempts: i32 = row.try_get("attempts")?;
        let mut delivery = Delivery::new(message_of(&row)?, group)
            .with_attempt(attempts.max(1) as u32)
            .with_first_delivered_at(row.try_get("received_at")?);
        delivery.queue = row.try_get("queue")?;
        Ok(Some(Claimed {
            seq: row.try_get("seq")?,
            delivery,
        }))
    }

    async fn inbox_lock(conn: &mut PgConnection, seq: i64) -> Result<bool, sqlx::Error> {
        let found = sqlx::query(
            "SELECT 1 FROM courier_inbox.messages WHERE seq = $1 AND done_at IS NULL FOR UPDATE",
        )
        .bind(seq)
        .fetch_optional(conn)
        .await?;
        Ok(found.is_some())
    }

    async fn inbox_mark_done(conn: &mut PgConnection, seq: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE courier_inbox.messages SET done_at = now(), last_error = NULL WHERE seq = $1",
        )
        .bind(seq)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn inbox_retry_later(
        pool: &PgPool,
        seq: i64,
        delay: Duration,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE courier_inbox.messages
             SET available_at = now() + make_interval(secs => $2), last_error = $3
             WHERE seq = $1",
        )
        .bind(seq)
        .bind(delay.as_secs_f64())
        .bind(error)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn inbox_dead_letter(pool: &PgPool, seq: i64, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH moved AS (DELETE FROM courier_inbox.messages WHERE seq = $1 RETURNING *)
             INSERT INTO courier_inbox.dead_letters
                 (consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                  received_at, attempts, last_error)
             SELECT consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                    received_at, attempts, $2
             FROM moved
             ON CONFLICT (consumer_group, id) DO NOTHING",
        )
        .bind(seq)
        .bind(error)
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn inbox_pending(pool: &PgPool, group: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM courier_inbox.messages
             WHERE consumer_group = $1 AND done_at IS NULL",
        )
        .bind(group)
        .fetch_one(pool)
        .await
    }

    async fn inbox_dead_letters(
        pool: &PgPool,
        group: &str,
    ) -> Result<Vec<InboxDeadLetter>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM courier_inbox.dead_letters
             WHERE consumer_group = $1 ORDER BY failed_at, id",
        )
        .bind(group)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get("attempts")?;
                Ok(InboxDeadLetter {
                    group: row.try_get("consumer_group")?,
                    message: message_of(row)?,
                    attempts: attempts.max(0) as u32,
                    last_error: row.try_get("last_error")?,
                    failed_at: row.try_get("failed_at")?,
                })
            })
            .collect()
    }

    async fn inbox_replay(pool: &PgPool, group: &str, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "WITH moved AS (DELETE FROM courier_inbox.dead_letters
                            WHERE consumer_group = $1 AND id = ANY($2) RETURNING *)
             INSERT INTO courier_inbox.messages
                 (consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                  received_at)
             SELECT consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                    received_at
             FROM moved
             ON CONFLICT (consumer_group, id) DO UPDATE
                 SET attempts = 0, available_at = now(), done_at = NULL, last_error = NULL",
        )
        .bind(group)
        .bind(ids)
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn inbox_purge_done(pool: &PgPool, age: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM courier_inbox.messages
             WHERE done_at IS NOT NULL AND done_at < now() - make_interval(secs => $1)",
        )
        .bind(age.as_secs_f64())
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }
}
