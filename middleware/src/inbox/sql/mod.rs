//! The SQL of the durable inbox, one file per database.

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Database, Executor, Pool};
use uuid::Uuid;

use super::{InboxDeadLetter, Stored};
use crate::Delivery;

/// A claimed row: its sequence number, the lease that proves the claim, and the delivery to hand
/// to the handler.
pub struct Claimed {
    pub(crate) seq: i64,
    pub(crate) lease: Lease,
    pub(crate) delivery: Delivery,
}

/// What a claim wrote to its row: the attempt it counted and the end of its lease. A worker holds
/// the row while both are unchanged. Any later claim changes both (it counts another attempt and
/// moves the lease), so every statement a worker makes after the handler (marking the row done,
/// scheduling the retry, dead-lettering) carries them in its `WHERE` and does nothing once the
/// lease ran out and another worker claimed the row: the row is that worker's then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub(crate) attempts: i64,
    pub(crate) until: DateTime<Utc>,
}

/// The inbox's SQL; a part of [`TxDatabase`](crate::TxDatabase).
pub trait InboxSql: Database {
    /// Stores the delivery unless it is already stored or dead-lettered.
    fn inbox_insert<'e, E: Executor<'e, Database = Self>>(
        executor: E,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Stored, sqlx::Error>> + Send;

    /// [`inbox_insert`](Self::inbox_insert) through the pool; spelled out per database because generic code
    /// cannot name the pool as an executor.
    fn inbox_insert_pooled(
        pool: &Pool<Self>,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Stored, sqlx::Error>> + Send;

    /// Takes the oldest due row of `group` that no one holds: counts the attempt and hides the row
    /// for `lease`, in its own short transaction.
    fn inbox_claim(
        pool: &Pool<Self>,
        group: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Claimed>, sqlx::Error>> + Send;

    /// Locks a claimed row for processing in the handler's transaction; `false` if the worker no
    /// longer holds it (another worker claimed it after the lease ran out, or finished it).
    fn inbox_lock(
        conn: &mut Self::Connection,
        seq: i64,
        lease: &Lease,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Marks the row processed, in the handler's transaction; `false` (nothing written) if the
    /// worker no longer holds the row.
    fn inbox_mark_done(
        conn: &mut Self::Connection,
        seq: i64,
        lease: &Lease,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Makes the row due again after `delay`, keeping the error; `false` (nothing written) if the
    /// worker no longer holds the row.
    fn inbox_retry_later(
        pool: &Pool<Self>,
        seq: i64,
        lease: &Lease,
        delay: Duration,
        error: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Moves the row to the dead letters; `false` (nothing moved) if the worker no longer holds
    /// the row.
    fn inbox_dead_letter(
        pool: &Pool<Self>,
        seq: i64,
        lease: &Lease,
        error: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Rows of `group` not processed yet.
    fn inbox_pending(
        pool: &Pool<Self>,
        group: &str,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;

    /// `group`'s dead letters, oldest first.
    fn inbox_dead_letters(
        pool: &Pool<Self>,
        group: &str,
    ) -> impl Future<Output = Result<Vec<InboxDeadLetter>, sqlx::Error>> + Send;

    /// Moves dead letters back into the inbox, due at once with zero attempts.
    fn inbox_replay(
        pool: &Pool<Self>,
        group: &str,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Deletes processed rows older than `age`.
    fn inbox_purge_done(
        pool: &Pool<Self>,
        age: Duration,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
}
