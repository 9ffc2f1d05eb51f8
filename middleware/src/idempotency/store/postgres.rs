//! Idempotency records on Postgres (`courier_inbox.processed`).

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres};

use super::IdempotencySql;

impl IdempotencySql for Postgres {
    async fn idempotency_record(
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

    async fn idempotency_record_many(
        conn: &mut PgConnection,
        keys: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, sqlx::Error> {
        let (groups, keys): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(g, k)| (g.as_str(), k.as_str())).unzip();
        // Key order, so that batches of several processes take row locks in the same order.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "INSERT INTO courier_inbox.processed (consumer_group, key)
             SELECT DISTINCT g, k FROM unnest($1::text[], $2::text[]) AS t(g, k) ORDER BY g, k
             ON CONFLICT DO NOTHING
             RETURNING consumer_group, key",
        )
        .bind(groups)
        .bind(keys)
        .fetch_all(conn)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn idempotency_still_held(
        conn: &mut PgConnection,
        keys: &[(String, String)],
    ) -> Result<bool, sqlx::Error> {
        let _ = keys;
        // A failed statement aborts the transaction, and `COMMIT` of an aborted transaction rolls
        // back without an error: a handler that swallowed the failure would be acked with its
        // writes and the record gone. Any statement tells: it fails with 25P02 once aborted.
        match sqlx::query("SELECT 1").execute(conn).await {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("25P02") => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    async fn idempotency_seen(pool: &PgPool, group: &str, key: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM courier_inbox.processed
                            WHERE consumer_group = $1 AND key = $2)",
        )
        .bind(group)
        .bind(key)
        .fetch_one(pool)
        .await
    }

    async fn idempotency_purge(pool: &PgPool, window: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM courier_inbox.processed
             WHERE processed_at < now() - make_interval(secs => $1)",
        )
        .bind(window.as_secs_f64())
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }
}
