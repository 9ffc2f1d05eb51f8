//! The SQL of the durable inbox, one file per database.

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;
use std::time::Duration;

use sqlx::{Database, Executor, Pool};
use uuid::Uuid;

use super::{InboxDeadLetter, Stored};
use crate::Delivery;

/// A claimed row: its sequence number and the delivery to hand to the handler.
pub struct Claimed {
    pub(crate) seq: i64,
    pub(crate) delivery: Delivery,
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

    /// Locks a claimed row for processing in the handler's transaction; `false` if another worker
    /// finished it meanwhile.
    fn inbox_lock(
        conn: &mut Self::Connection,
        seq: i64,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Marks the row processed, in the handler's transaction.
    fn inbox_mark_done(
        conn: &mut Self::Connection,
        seq: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Makes the row due again after `delay`, keeping the error.
    fn inbox_retry_later(
        pool: &Pool<Self>,
        seq: i64,
        delay: Duration,
        error: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Moves the row to the dead letters.
    fn inbox_dead_letter(
        pool: &Pool<Self>,
        seq: i64,
        error: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

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
