//! Idempotency records on SQLite (`courier_inbox_processed`; times in microseconds since the
//! epoch, computed here because SQLite has no microsecond clock).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::IdempotencySql;
use crate::clock;

impl IdempotencySql for Sqlite {
    async fn idempotency_record(
        conn: &mut SqliteConnection,
        group: &str,
        key: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO courier_inbox_processed (consumer_group, key, processed_at)
             VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(key)
        .bind(clock::now_micros())
        .execute(conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn idempotency_record_many(
        conn: &mut SqliteConnection,
        keys: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, sqlx::Error> {
        // One statement per key: they run in-process in the batch's write transaction, so a
        // multi-row statement would save little, and SQLite caps the parameters of one statement.
        let now = clock::now_micros();
        let mut fresh = HashSet::new();
        for (group, key) in keys.iter().collect::<BTreeSet<_>>() {
            let done = sqlx::query(
                "INSERT INTO courier_inbox_processed (consumer_group, key, processed_at)
                 VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(key)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 1 {
                fresh.insert((group.clone(), key.clone()));
            }
        }
        Ok(fresh)
    }

    async fn idempotency_seen(
        pool: &SqlitePool,
        group: &str,
        key: &str,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM courier_inbox_processed
                            WHERE consumer_group = $1 AND key = $2)",
        )
        .bind(group)
        .bind(key)
        .fetch_one(pool)
        .await
    }

    async fn idempotency_purge(pool: &SqlitePool, window: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM courier_inbox_processed WHERE processed_at < $1")
            .bind(clock::micros_ago(window))
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }
}
