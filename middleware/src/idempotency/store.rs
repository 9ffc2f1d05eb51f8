//! The SQL of the idempotency records.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// Inserts the record; `false` when it already existed (a duplicate). Waits for a concurrent
/// transaction holding the same key to end.
pub(super) async fn record(
    conn: &mut PgConnection,
    group: &str,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO courier_inbox.processed (consumer_group, key) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes records older than `window`.
pub(super) async fn purge(pool: &PgPool, window: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM courier_inbox.processed
         WHERE processed_at < now() - make_interval(secs => $1)",
    )
    .bind(window.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
