//! The relay's bookkeeping SQL on SQLite: migration check, next due time, backlog, retention purge.

use std::time::Duration;

use sqlx::{Row, SqlitePool};

use super::time::{micros, now_micros};
use crate::relay::Backlog;

/// Whether the outbox tables exist in this database.
pub(super) async fn is_migrated(pool: &SqlitePool) -> sqlx::Result<bool> {
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master
         WHERE type = 'table' AND name IN ('outbox_messages', 'outbox_failures')",
    )
    .fetch_one(pool)
    .await?;
    Ok(tables == 2)
}

/// How long until the earliest pending row that is not claimable now becomes claimable: a delayed
/// or backing-off message, or a row whose lease (of a relay that may have died) runs out.
pub(super) async fn next_due(pool: &SqlitePool) -> sqlx::Result<Option<Duration>> {
    let now = now_micros();
    let due: Option<i64> = sqlx::query_scalar(
        "SELECT min(max(available_at, COALESCE(leased_until, 0))) FROM outbox_messages
         WHERE sent_at IS NULL AND max(available_at, COALESCE(leased_until, 0)) > ?1",
    )
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(due.map(|at| Duration::from_micros(u64::try_from(at - now).unwrap_or(0))))
}

/// Pending messages, and the age of the oldest one that is due.
pub(super) async fn backlog(pool: &SqlitePool) -> sqlx::Result<Backlog> {
    let now = now_micros();
    let row = sqlx::query(
        "SELECT count(*) AS pending,
                min(CASE WHEN available_at <= ?1 THEN available_at END) AS oldest_due
         FROM outbox_messages WHERE sent_at IS NULL",
    )
    .bind(now)
    .fetch_one(pool)
    .await?;
    let oldest_due: Option<i64> = row.try_get("oldest_due")?;
    Ok(Backlog {
        pending: row.try_get("pending")?,
        oldest_due_age: oldest_due
            .map(|at| Duration::from_micros(u64::try_from(now - at).unwrap_or(0)))
            .unwrap_or_default(),
    })
}

/// Deletes sent rows older than `retention`, at most `limit` at a time.
pub(super) async fn purge_sent(
    pool: &SqlitePool,
    retention: Duration,
    limit: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM outbox_messages WHERE seq IN (
             SELECT seq FROM outbox_messages
             WHERE sent_at IS NOT NULL AND sent_at < ?1
             LIMIT ?2)",
    )
    .bind(now_micros().saturating_sub(micros(retention)))
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
