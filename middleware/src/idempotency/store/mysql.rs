//! Idempotency records on MySQL / MariaDB (`courier_inbox_processed`; times from the server's
//! `UTC_TIMESTAMP(6)`).
//!
//! # How a duplicate is detected, and which locks that takes
//!
//! The record is a plain `INSERT`, the first statement of the handler's transaction, and a
//! duplicate is its "duplicate entry" error (1062), which rolls back that statement only. Both
//! alternatives are worse on InnoDB:
//!
//! - `INSERT ... ON DUPLICATE KEY UPDATE` takes an exclusive lock on the existing record, so
//!   duplicates of one key queue up behind each other, and two of them can deadlock;
//! - `INSERT IGNORE` turns every error into a warning, "data too long" included: in a non-strict
//!   `sql_mode` a long key would be cut, and two keys with a common prefix taken for one.
//!
//! A fresh key takes only the lock on its own new record: no gap lock, so deliveries of other keys
//! never wait on it, and nothing at all in the handler's tables. A duplicate takes a shared lock on
//! the existing record (and the gap before it), held only until the layer rolls back, at once. A
//! second delivery of a key whose first transaction is still open waits on that record, then gets
//! the duplicate error (the first committed) or inserts (it rolled back). When two deliveries wait
//! so and the first rolls back, both get the shared lock and both need the exclusive one: InnoDB
//! breaks the deadlock by rolling back one of them, and since the record is the first statement of
//! its transaction the layer begins it again ([`Dialect::restartable`](crate::database::sealed::Dialect::restartable)).
//! A lock wait timeout (1205: the first delivery's handler ran longer than
//! `innodb_lock_wait_timeout`) is returned: the delivery is redelivered, and by then it finds the
//! record or takes over.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder};

use super::IdempotencySql;
use crate::mysql::conflict::{is_duplicate, is_lock_wait_timeout, retry_deadlocks};
use crate::mysql::{PURGE_BATCH, begin_read_committed, micros};

/// The widths of the record's key columns (`VARBINARY`, see the migration).
const MAX_GROUP_BYTES: usize = 255;
const MAX_KEY_BYTES: usize = 2048;

/// Refuses what the columns cannot hold, before the server could cut it (a non-strict
/// `sql_mode` truncates silently, which could make two keys one).
fn check_widths(group: &str, key: &str) -> Result<(), sqlx::Error> {
    if group.len() > MAX_GROUP_BYTES {
        return Err(sqlx::Error::InvalidArgument(format!(
            "the consumer group {group:?} is {} bytes long; the MySQL idempotency records keep \
             groups of at most {MAX_GROUP_BYTES} bytes: use a shorter group name",
            group.len()
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(sqlx::Error::InvalidArgument(format!(
            "the idempotency key of {} bytes (starting {:?}) is longer than the {MAX_KEY_BYTES} \
             bytes the MySQL idempotency records keep: use a shorter idempotency-key header",
            key.len(),
            key.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// Inserts one record; `false` when the key is taken.
async fn insert(conn: &mut MySqlConnection, group: &str, key: &str) -> Result<bool, sqlx::Error> {
    check_widths(group, key)?;
    let inserted = sqlx::query(
        "INSERT INTO courier_inbox_processed (consumer_group, `key`, processed_at)
         VALUES (?, ?, UTC_TIMESTAMP(6))",
    )
    .bind(group.as_bytes())
    .bind(key.as_bytes())
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(error) if is_duplicate(&error) => Ok(false),
        Err(error) if is_lock_wait_timeout(&error) => {
            tracing::warn!(%group, %key, "idempotency record: another delivery of this key has \
                held its transaction open longer than innodb_lock_wait_timeout; this delivery \
                fails and is redelivered, and then finds that one's record or takes over");
            Err(error)
        }
        Err(error) => Err(error),
    }
}

impl IdempotencySql for MySql {
    async fn idempotency_record(
        conn: &mut MySqlConnection,
        group: &str,
        key: &str,
    ) -> Result<bool, sqlx::Error> {
        insert(conn, group, key).await
    }

    async fn idempotency_record_many(
        conn: &mut MySqlConnection,
        keys: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, sqlx::Error> {
        // One statement per key, in key order (so batches of several processes take the records'
        // locks in the same order): a multi-row insert cannot tell which rows were new without
        // `RETURNING`, which MySQL 8 lacks, and a duplicate would fail the whole statement.
        let mut fresh = HashSet::new();
        for (group, key) in keys.iter().collect::<BTreeSet<_>>() {
            if insert(conn, group, key).await? {
                fresh.insert((group.clone(), key.clone()));
            }
        }
        Ok(fresh)
    }

    async fn idempotency_still_held(
        conn: &mut MySqlConnection,
        keys: &[(String, String)],
    ) -> Result<bool, sqlx::Error> {
        // Inside the transaction its own records are visible. If InnoDB rolled the transaction
        // back (a deadlock the handler did not return), this runs in autocommit mode and sees only
        // committed records: a key without one was handled by nobody, so the commit must not ack
        // it. A key recorded by a concurrent delivery meanwhile counts: that one handled it.
        let wanted: BTreeSet<_> = keys.iter().collect();
        if wanted.is_empty() {
            return Ok(true);
        }
        let mut query = QueryBuilder::<MySql>::new(
            "SELECT count(*) FROM courier_inbox_processed WHERE (consumer_group, `key`) IN ",
        );
        query.push_tuples(&wanted, |mut row, (group, key)| {
            row.push_bind(group.as_bytes()).push_bind(key.as_bytes());
        });
        let found: i64 = query.build_query_scalar().fetch_one(conn).await?;
        Ok(usize::try_from(found).is_ok_and(|found| found == wanted.len()))
    }

    async fn idempotency_seen(
        pool: &MySqlPool,
        group: &str,
        key: &str,
    ) -> Result<bool, sqlx::Error> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM courier_inbox_processed WHERE consumer_group = ? AND `key` = ?",
        )
        .bind(group.as_bytes())
        .bind(key.as_bytes())
        .fetch_optional(pool)
        .await?;
        Ok(found.is_some())
    }

    async fn idempotency_purge(pool: &MySqlPool, window: Duration) -> Result<u64, sqlx::Error> {
        // The cutoff is fixed once, so records written while the purge runs are never its.
        let cutoff: DateTime<Utc> =
            sqlx::query_scalar("SELECT UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND")
                .bind(micros(window))
                .fetch_one(pool)
                .await?;
        let mut purged = 0;
        loop {
            // A plain (consistent, lock-free) read picks the batch by primary key; the delete then
            // locks those rows only, re-checking their age. A range delete on `processed_at`
            // would lock the range's end too: under REPEATABLE READ the gap up to the next record,
            // where every new record goes when all older ones are expired.
            let batch: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
                "SELECT consumer_group, `key` FROM courier_inbox_processed
                 WHERE processed_at < ? ORDER BY processed_at LIMIT ?",
            )
            .bind(cutoff)
            .bind(PURGE_BATCH as u64)
            .fetch_all(pool)
            .await?;
            if batch.is_empty() {
                return Ok(purged);
            }
            purged += retry_deadlocks("idempotency purge", || delete(pool, cutoff, &batch)).await?;
            if batch.len() < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }
}

/// Deletes the records of `batch` still older than `cutoff`, in a READ COMMITTED transaction.
async fn delete(
    pool: &MySqlPool,
    cutoff: DateTime<Utc>,
    batch: &[(Vec<u8>, Vec<u8>)],
) -> Result<u64, sqlx::Error> {
    let mut tx = begin_read_committed(pool).await?;
    // `FORCE INDEX`: with hundreds of key pairs the optimizer may prefer a table scan, and a scan
    // that meets a record of an open transaction waits for it (READ COMMITTED releases the locks
    // of rows that do not match, but only after it got them). Index hints need the multi-table
    // form of DELETE, on MySQL 8 and MariaDB alike.
    let mut query = QueryBuilder::<MySql>::new(
        "DELETE p FROM courier_inbox_processed AS p FORCE INDEX (PRIMARY)
         WHERE p.processed_at < ",
    );
    query.push_bind(cutoff);
    query.push(" AND (p.consumer_group, p.`key`) IN ");
    query.push_tuples(batch, |mut row, (group, key)| {
        row.push_bind(group.as_slice()).push_bind(key.as_slice());
    });
    let deleted = query.build().execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(deleted)
}
