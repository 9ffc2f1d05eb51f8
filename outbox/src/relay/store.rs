//! The relay's SQL on Postgres: claim due rows, record outcomes, find the next due time.

use std::time::Duration;

use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use crate::Message;

/// A claimed row: the envelope plus its sequence number.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) seq: i64,
    pub(crate) message: Message,
}

/// What happened to one claimed row.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The broker has it: delete or mark sent.
    Published,
    /// Failed; try again after the delay.
    Retry { error: String, delay: Duration },
    /// Failed for good: move to the failure table.
    Failed { error: String },
    /// Not attempted because an earlier message with the same key failed; left untouched.
    Held,
}

const CLAIM: &str = "\
SELECT m.seq, m.id, m.topic, m.key, m.tag, m.headers, m.payload, m.created_at, m.available_at, m.attempts
FROM outbox.messages m
WHERE m.sent_at IS NULL
  AND m.available_at <= now()
  AND (m.partition IS NULL OR m.partition = ANY($1))
  AND (m.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM outbox.messages e
        WHERE e.key = m.key AND e.seq < m.seq AND e.sent_at IS NULL AND e.available_at > now()))
ORDER BY m.seq
LIMIT $2
FOR UPDATE OF m SKIP LOCKED";

/// Locks up to `limit` due rows in `conn`'s open transaction, oldest first.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    partitions: &[i16],
    limit: usize,
) -> sqlx::Result<Vec<Claimed>> {
    let rows = sqlx::query(CLAIM)
        .bind(partitions)
        .bind(limit as i64)
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|row| {
            let Json(headers) = row.try_get("headers")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let attempts: i32 = row.try_get("attempts")?;
            Ok(Claimed {
                seq: row.try_get("seq")?,
                message: Message {
                    id: row.try_get("id")?,
                    topic: row.try_get("topic")?,
                    key: row.try_get("key")?,
                    tag: row.try_get("tag")?,
                    headers,
                    payload: payload.into(),
                    created_at: row.try_get("created_at")?,
                    available_at: Some(row.try_get("available_at")?),
                    delay: None,
                    attempts: attempts.max(0) as u32,
                },
            })
        })
        .collect()
}

/// Writes the outcomes of a batch in `conn`'s open transaction.
pub(crate) async fn record(
    conn: &mut PgConnection,
    outcomes: &[(i64, Outcome)],
    keep_sent: bool,
) -> sqlx::Result<()> {
    let mut published = Vec::new();
    let (mut retry_seq, mut retry_error, mut retry_delay_us) = (Vec::new(), Vec::new(), Vec::new());
    let (mut failed_seq, mut failed_error) = (Vec::new(), Vec::new());
    for (seq, outcome) in outcomes {
        match outcome {
            Outcome::Published => published.push(*seq),
            Outcome::Retry { error, delay } => {
                retry_seq.push(*seq);
                retry_error.push(error.as_str());
                retry_delay_us.push(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
            }
            Outcome::Failed { error } => {
                failed_seq.push(*seq);
                failed_error.push(error.as_str());
            }
            Outcome::Held => {}
        }
    }
    if !published.is_empty() {
        let sql = if keep_sent {
            "UPDATE outbox.messages SET sent_at = now(), attempts = attempts + 1, \
             last_attempt_at = clock_timestamp() WHERE seq = ANY($1)"
        } else {
            "DELETE FROM outbox.messages WHERE seq = ANY($1)"
        };
        sqlx::query(sql)
            .bind(&published)
            .execute(&mut *conn)
            .await?;
    }
    if !retry_seq.is_empty() {
        sqlx::query(
            "UPDATE outbox.messages m
             SET attempts = m.attempts + 1, last_error = u.error,
                 last_attempt_at = clock_timestamp(),
                 available_at = clock_timestamp() + u.delay_us * interval '1 microsecond'
             FROM UNNEST($1::int8[], $2::text[], $3::int8[]) AS u(seq, error, delay_us)
             WHERE m.seq = u.seq",
        )
        .bind(&retry_seq)
        .bind(&retry_error)
        .bind(&retry_delay_us)
        .execute(&mut *conn)
        .await?;
    }
    if !failed_seq.is_empty() {
        sqlx::query(
            "WITH moved AS (
                 DELETE FROM outbox.messages m
                 USING UNNEST($1::int8[], $2::text[]) AS u(seq, error)
                 WHERE m.seq = u.seq
                 RETURNING m.*, u.error
             )
             INSERT INTO outbox.failures
                 (id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error, failed_at)
             SELECT id, seq, topic, key, tag, headers, payload, created_at, attempts + 1, error,
                    clock_timestamp()
             FROM moved
             ON CONFLICT (id) DO UPDATE SET
                 attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,
                 failed_at = EXCLUDED.failed_at",
        )
        .bind(&failed_seq)
        .bind(&failed_error)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// How long until the earliest pending message that is not yet due becomes due, by the database
/// clock (so clock skew between this host and the database does not matter).
pub(crate) async fn next_due(conn: &mut PgConnection) -> sqlx::Result<Option<Duration>> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM min(available_at) - now())::float8 FROM outbox.messages
         WHERE sent_at IS NULL AND available_at > now()",
    )
    .fetch_one(conn)
    .await?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// Pending messages, and the age in seconds of the oldest one that is due.
pub(crate) async fn backlog(conn: &mut PgConnection) -> sqlx::Result<(i64, f64)> {
    let row = sqlx::query(
        "SELECT count(*) AS pending,
                COALESCE(EXTRACT(EPOCH FROM now() - min(available_at)
                         FILTER (WHERE available_at <= now())), 0)::float8 AS oldest_due_age
         FROM outbox.messages WHERE sent_at IS NULL",
    )
    .fetch_one(conn)
    .await?;
    Ok((row.try_get("pending")?, row.try_get("oldest_due_age")?))
}

/// Deletes sent rows older than `retention`, at most `limit` at a time.
pub(crate) async fn purge_sent(
    conn: &mut PgConnection,
    retention: Duration,
    limit: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM outbox.messages WHERE seq IN (
             SELECT seq FROM outbox.messages
             WHERE sent_at IS NOT NULL AND sent_at < now() - $1 * interval '1 microsecond'
             LIMIT $2)",
    )
    .bind(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX))
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Whether the outbox tables exist in this database.
pub(crate) async fn is_migrated(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT to_regclass('outbox.messages') IS NOT NULL
            AND to_regclass('outbox.failures') IS NOT NULL",
    )
    .fetch_one(conn)
    .await
}

/// Asks the insert trigger to send NOTIFY: this relay is about to wait for one.
pub(crate) async fn mark_idle(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox.idle_relays (pid) VALUES (pg_backend_pid()) ON CONFLICT DO NOTHING",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// This relay polls on its own for now; the trigger need not notify on its behalf.
pub(crate) async fn unmark_idle(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM outbox.idle_relays WHERE pid = pg_backend_pid()")
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes the idle marks of relay connections that no longer exist (a crashed relay), which
/// would otherwise keep the trigger notifying for nobody.
pub(crate) async fn forget_dead_relays(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM outbox.idle_relays WHERE pid NOT IN (SELECT pid FROM pg_stat_activity)",
    )
    .execute(conn)
    .await?;
    Ok(())
}
