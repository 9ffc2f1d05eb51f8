//! The SQL of the idempotency records, one file per database.

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
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
    /// before it commits. Postgres and SQLite end a transaction only when told (a failed statement
    /// aborts a Postgres transaction, and every later statement fails), so they answer `true`
    /// without asking. MySQL ends it by itself on a deadlock and goes on in autocommit mode: a
    /// handler that swallowed the error would have its commit commit nothing, the record gone.
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
