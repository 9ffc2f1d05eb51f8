//! What the MySQL store shares: recognising lock conflicts, and the short READ COMMITTED
//! transactions of the middleware's own bookkeeping (claims, retries, dead letters, purges).

pub(crate) mod conflict;

use std::time::Duration;

use sqlx::{MySql, MySqlPool, Transaction};

/// Rows a purge deletes per transaction: each batch holds its row locks only for one short
/// statement, so deliveries writing records or inbox rows meanwhile wait on none of them for long.
pub(crate) const PURGE_BATCH: usize = 500;

/// Begins a READ COMMITTED transaction for the middleware's own statements. At that level InnoDB
/// takes no gap locks for locking reads, updates and deletes (only record locks on the rows they
/// touch), so a claim or a purge never blocks the inserts of a delivery (an insert waits on a gap
/// lock of the range it falls in, which REPEATABLE READ would take) and cannot deadlock with them
/// that way. `SET TRANSACTION` without `SESSION` applies to the next transaction only, so the
/// pooled connection keeps its own level afterwards.
pub(crate) async fn begin_read_committed(
    pool: &MySqlPool,
) -> Result<Transaction<'static, MySql>, sqlx::Error> {
    pool.begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
        .await
}

/// A duration in whole microseconds, as `INTERVAL ? MICROSECOND` takes it.
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
