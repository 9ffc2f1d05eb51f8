//! The SQL of the idempotency records, one file per database.

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use sqlx::{Database, Pool};

/// The idempotency records' SQL; a part of [`TxDatabase`](crate::TxDatabase).
pub trait IdempotencySql: Database {
    /// Inserts the record; `false` when it already existed (a duplicate). On Postgres and MySQL it
    /// waits for a concurrent transaction holding the same key to end; on SQLite the caller's
    /// transaction already holds the write lock. The first statement of its transaction.
    fn idempotency_record(
        conn: &mut Self::Connection,
        group: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Inserts many records in key order; returns the (group, key) pairs that were new. The first
    /// statement(s) of its transaction.
    fn idempotency_record_many(
        conn: &mut Self::Connection,
        keys: &[(String, String)],
    ) -> impl Future<Output = Result<HashSet<(String, String)>, sqlx::Error>> + Send;

    /// Whether the transaction on `conn` still holds the records of `keys` it inserted, checked
    /// before it commits. A handler that swallowed a database error may answer `Ok` over a
    /// transaction that can no longer commit: Postgres aborts it on a failed statement (and its
    /// `COMMIT` then rolls back without an error), MySQL rolls it back on a deadlock and goes on
    /// in autocommit mode. Either way the record is gone, so the delivery must not be acked.
    /// SQLite keeps the transaction after a failed statement and answers `true` without asking.
    fn idempotency_still_held(
        conn: &mut Self::Connection,
        keys: &[(String, String)],
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        let _ = (conn, keys);
        std::future::ready(Ok(true))
    }

    /// Whether the record exists (committed), without writing one.
    fn idempotency_seen(
        pool: &Pool<Self>,
        group: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Deletes records older than `window`.
    fn idempotency_purge(
        pool: &Pool<Self>,
        window: Duration,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
}
