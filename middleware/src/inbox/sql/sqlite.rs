//! The durable inbox on SQLite (tables `courier_inbox_*`). SQLite has one writer at a time, so the
//! claim needs no `SKIP LOCKED`, and the handler's `BEGIN IMMEDIATE` transaction keeps other
//! workers out of the row (and of the whole database) until it ends. Times are microseconds since
//! the epoch, computed here ([`clock`]).

use std::time::Duration;

use courier_core::Message;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Executor, Row, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{Claimed, InboxSql, Lease};
use crate::database::sealed::Dialect;
use crate::inbox::{InboxDeadLetter, Stored};
use crate::{Delivery, clock};

fn message_of(row: &SqliteRow) -> Result<Message, sqlx::Error> {
    let Json(headers) = row.try_get("headers")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let mut message =
        Message::new(row.try_get::<String, _>("topic")?, payload).with_id(row.try_get("id")?);
    message.key = row.try_get("key")?;
    message.tag = row.try_get("tag")?;
    message.headers = headers;
    message.created_at = clock::from_micros(row.try_get("created_at")?)?;
    Ok(message)
}

/// The row `$1` is unfinished and still carries the claim's lease (`$2` attempts, lease until `$3`).
const HOLDS: &str = "seq = $1 AND done_at IS NULL AND attempts = $2 AND available_at = $3";

impl InboxSql for Sqlite {
    async fn inbox_insert<'e, E: Executor<'e, Database = Self>>(
        executor: E,
        delivery: &Delivery,
    ) -> Result<Stored, sqlx::Error> {
        let message = &delivery.message;
        let done = sqlx::query(
            "INSERT INTO courier_inbox_messages
                 (consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                  received_at, available_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10
             WHERE NOT EXISTS (SELECT 1 FROM courier_inbox_dead_letters
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
        .bind(message.created_at.timestamp_micros())
        .bind(&delivery.queue)
        .bind(clock::now_micros())
        .execute(executor)
        .await?;
        Ok(if done.rows_affected() == 1 {
            Stored::New
        } else {
            Stored::Duplicate
        })
    }

    async fn inbox_insert_pooled(
        pool: &SqlitePool,
        delivery: &Delivery,
    ) -> Result<Stored, sqlx::Error> {
        Self::inbox_insert(pool, delivery).await
    }

    async fn inbox_claim(
        pool: &SqlitePool,
        group: &str,
        lease: Duration,
    ) -> Result<Option<Claimed>, sqlx::Error> {
        // One statement: it takes the write lock from its start, so two workers cannot both pick
        // the row.
        let row = sqlx::query(
            "UPDATE courier_inbox_messages
             SET attempts = attempts + 1, available_at = $3
             WHERE seq = (SELECT seq FROM courier_inbox_messages
                          WHERE consumer_group = $1 AND done_at IS NULL AND available_at <= $2
                          ORDER BY available_at, seq
                          LIMIT 1)
             RETURNING *",
        )
        .bind(group)
        .bind(clock::now_micros())
        .bind(clock::micros_from_now(lease))
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let attempts: i64 = row.try_get("attempts")?;
        let mut delivery = Delivery::new(message_of(&row)?, group)
            .with_attempt(u32::try_from(attempts.max(1)).unwrap_or(u32::MAX))
            .with_first_delivered_at(clock::from_micros(row.try_get("received_at")?)?);
        delivery.queue = row.try_get("queue")?;
        Ok(Some(Claimed {
            seq: row.try_get("seq")?,
            lease: Lease {
                attempts,
                until: clock::from_micros(row.try_get("available_at")?)?,
            },
            delivery,
        }))
    }

    // Each statement below names the row by `seq` and the claim's lease (`HOLDS`). The write lock
    // keeps other workers out while the handler's transaction runs, but not between its rollback
    // and the recording of the failure: another worker may claim the row in between.

    async fn inbox_lock(
        conn: &mut SqliteConnection,
        seq: i64,
        lease: &Lease,
    ) -> Result<bool, sqlx::Error> {
        // The transaction already holds the write lock (BEGIN IMMEDIATE): only check the row.
        let found = sqlx::query(&format!(
            "SELECT 1 FROM courier_inbox_messages WHERE {HOLDS}"
        ))
        .bind(seq)
        .bind(lease.attempts)
        .bind(lease.until.timestamp_micros())
        .fetch_optional(conn)
        .await?;
        Ok(found.is_some())
    }

    async fn inbox_mark_done(
        conn: &mut SqliteConnection,
        seq: i64,
        lease: &Lease,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&format!(
            "UPDATE courier_inbox_messages SET done_at = $4, last_error = NULL WHERE {HOLDS}"
        ))
        .bind(seq)
        .bind(lease.attempts)
        .bind(lease.until.timestamp_micros())
        .bind(clock::now_micros())
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn inbox_retry_later(
        pool: &SqlitePool,
        seq: i64,
        lease: &Lease,
        delay: Duration,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&format!(
            "UPDATE courier_inbox_messages SET available_at = $4, last_error = $5 WHERE {HOLDS}"
        ))
        .bind(seq)
        .bind(lease.attempts)
        .bind(lease.until.timestamp_micros())
        .bind(clock::micros_from_now(delay))
        .bind(error)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn inbox_dead_letter(
        pool: &SqlitePool,
        seq: i64,
        lease: &Lease,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        // SQLite has no data-modifying CTE: copy, then delete, in one write transaction, both only
        // while this worker holds the row.
        let mut tx = <Sqlite as Dialect>::begin_write(pool).await?;
        sqlx::query(&format!(
            "INSERT INTO courier_inbox_dead_letters
                 (consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                  received_at, attempts, last_error, failed_at)
             SELECT consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                    received_at, attempts, $4, $5
             FROM courier_inbox_messages WHERE {HOLDS}
             ON CONFLICT (consumer_group, id) DO NOTHING"
        ))
        .bind(seq)
        .bind(lease.attempts)
        .bind(lease.until.timestamp_micros())
        .bind(error)
        .bind(clock::now_micros())
        .execute(&mut *tx)
        .await?;
        let moved = sqlx::query(&format!("DELETE FROM courier_inbox_messages WHERE {HOLDS}"))
            .bind(seq)
            .bind(lease.attempts)
            .bind(lease.until.timestamp_micros())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(moved.rows_affected() == 1)
    }

    async fn inbox_pending(pool: &SqlitePool, group: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM courier_inbox_messages
             WHERE consumer_group = $1 AND done_at IS NULL",
        )
        .bind(group)
        .fetch_one(pool)
        .await
    }

    async fn inbox_dead_letters(
        pool: &SqlitePool,
        group: &str,
    ) -> Result<Vec<InboxDeadLetter>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM courier_inbox_dead_letters
             WHERE consumer_group = $1 ORDER BY failed_at, id",
        )
        .bind(group)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                let attempts: i64 = row.try_get("attempts")?;
                Ok(InboxDeadLetter {
                    group: row.try_get("consumer_group")?,
                    message: message_of(row)?,
                    attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
                    last_error: row.try_get("last_error")?,
                    failed_at: clock::from_micros(row.try_get("failed_at")?)?,
                })
            })
            .collect()
    }

    async fn inbox_replay(
        pool: &SqlitePool,
        group: &str,
        ids: &[Uuid],
    ) -> Result<u64, sqlx::Error> {
        // No arrays to bind on SQLite: one copy and one delete per id, in one write transaction.
        let now = clock::now_micros();
        let mut tx = <Sqlite as Dialect>::begin_write(pool).await?;
        let mut moved = 0;
        for id in ids {
            sqlx::query(
                "INSERT INTO courier_inbox_messages
                     (consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                      received_at, available_at)
                 SELECT consumer_group, id, topic, key, tag, headers, payload, created_at, queue,
                        received_at, $3
                 FROM courier_inbox_dead_letters WHERE consumer_group = $1 AND id = $2
                 ON CONFLICT (consumer_group, id) DO UPDATE
                     SET attempts = 0, available_at = excluded.available_at, done_at = NULL,
                         last_error = NULL",
            )
            .bind(group)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let deleted = sqlx::query(
                "DELETE FROM courier_inbox_dead_letters WHERE consumer_group = $1 AND id = $2",
            )
            .bind(group)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            moved += deleted.rows_affected();
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn inbox_purge_done(pool: &SqlitePool, age: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM courier_inbox_messages WHERE done_at IS NOT NULL AND done_at < $1",
        )
        .bind(clock::micros_ago(age))
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }
}
