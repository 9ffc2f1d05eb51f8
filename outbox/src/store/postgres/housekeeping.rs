//! The relay's bookkeeping SQL on Postgres: next due time, backlog, retention purge, migration
//! check and the idle marks that switch the insert trigger's NOTIFY on and off.

use std::time::Duration;

use sqlx::{PgConnection, Row};

use crate::relay::Backlog;

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

/// Pending messages, and the age of the oldest one that is due.
pub(crate) async fn backlog(conn: &mut PgConnection) -> sqlx::Result<Backlog> {
    let row = sqlx::query(
        "SELECT count(*) AS pending,
                COALESCE(EXTRACT(EPOCH FROM now() - min(available_at)
                         FILTER (WHERE available_at <= now())), 0)::float8 AS oldest_due_age
         FROM outbox.messages WHERE sent_at IS NULL",
    )
    .fetch_one(conn)
    .await?;
    let oldest_due_age: f64 = row.try_get("oldest_due_age")?;
    Ok(Backlog {
        pending: row.try_get("pending")?,
        oldest_due_age: Duration::from_secs_f64(oldest_due_age.max(0.0)),
    })
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
