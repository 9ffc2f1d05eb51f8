//! The relay's bookkeeping SQL on MySQL: migration check, next due time, backlog, retention purge.

use std::time::Duration;

use sqlx::{MySqlPool, Row};

use super::claim::PK_BATCH;

/// Whether the outbox tables exist in the pool's database.
pub(super) async fn is_migrated(pool: &MySqlPool) -> sqlx::Result<bool> {
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables
         WHERE table_schema = DATABASE()
           AND table_name IN ('outbox_messages', 'outbox_failures', 'outbox_claim_turn')",
    )
    .fetch_one(pool)
    .await?;
    Ok(tables == 3)
}

fn from_micros(micros: Option<i64>) -> Option<Duration> {
    micros.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)))
}

/// How long until the earliest pending row that is not claimable now becomes claimable: a delayed
/// or backing-off message, or a row whose lease (of a relay that may have died) runs out.
pub(super) async fn next_due(pool: &MySqlPool) -> sqlx::Result<Option<Duration>> {
    let due: Option<i64> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6),
                              MIN(GREATEST(available_at, COALESCE(leased_until, available_at))))
         FROM outbox_messages
         WHERE sent_at IS NULL
           AND GREATEST(available_at, COALESCE(leased_until, available_at)) > UTC_TIMESTAMP(6)",
    )
    .fetch_one(pool)
    .await?;
    Ok(from_micros(due))
}

/// Pending messages, and the age of the oldest one that is due.
pub(super) async fn backlog(pool: &MySqlPool) -> sqlx::Result<crate::relay::Backlog> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS pending,
                TIMESTAMPDIFF(MICROSECOND,
                              MIN(CASE WHEN available_at <= UTC_TIMESTAMP(6) THEN available_at END),
                              UTC_TIMESTAMP(6)) AS oldest_due_age
         FROM outbox_messages WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(crate::relay::Backlog {
        pending: row.try_get("pending")?,
        oldest_due_age: from_micros(row.try_get("oldest_due_age")?).unwrap_or_default(),
    })
}

/// Deletes sent rows older than `retention`, at most `limit`, in primary-key batches of
/// [`PK_BATCH`] each in its own autocommit statement: a large `DELETE` holds many locks for long
/// and is a known source of deadlocks on MySQL.
pub(super) async fn purge_sent(
    pool: &MySqlPool,
    retention: Duration,
    limit: usize,
) -> sqlx::Result<u64> {
    let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    let mut purged = 0;
    while purged < limit as u64 {
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM outbox_messages
             WHERE sent_at IS NOT NULL
               AND sent_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND
             ORDER BY sent_at LIMIT ?",
        )
        .bind(retention)
        .bind(PK_BATCH as i64)
        .fetch_all(pool)
        .await?;
        if seqs.is_empty() {
            break;
        }
        let placeholders = vec!["?"; seqs.len()].join(", ");
        let sql = format!(
            "DELETE FROM outbox_messages WHERE seq IN ({placeholders}) AND sent_at IS NOT NULL"
        );
        let mut delete = sqlx::query(&sql);
        for seq in &seqs {
            delete = delete.bind(*seq);
        }
        purged += delete.execute(pool).await?.rows_affected();
        if seqs.len() < PK_BATCH {
            break;
        }
    }
    Ok(purged)
}
