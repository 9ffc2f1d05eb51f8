//! MySQL's lock conflicts, which sqlx reports as a generic database error: recognised by the
//! server's error number, and retried where the middleware's own statements can be run again.

use std::future::Future;

use sqlx::mysql::MySqlDatabaseError;

/// `ER_LOCK_DEADLOCK`: InnoDB rolled back the whole transaction to break a deadlock. The session
/// is then outside any transaction, and a later statement on it runs in autocommit mode.
const DEADLOCK: u16 = 1213;
/// `ER_LOCK_WAIT_TIMEOUT`: a statement waited `innodb_lock_wait_timeout` (50 s by default) for a
/// row lock. Only that statement is rolled back (unless `innodb_rollback_on_timeout` is on).
const LOCK_WAIT_TIMEOUT: u16 = 1205;
/// `ER_DUP_ENTRY`: the row's unique key is taken.
const DUPLICATE_ENTRY: u16 = 1062;

/// How many times a statement (or a short transaction of the middleware's own) that lost a
/// deadlock is run again before its error is returned.
const DEADLOCK_RETRIES: u32 = 5;

fn number(error: &sqlx::Error) -> Option<u16> {
    error
        .as_database_error()?
        .try_downcast_ref::<MySqlDatabaseError>()
        .map(MySqlDatabaseError::number)
}

/// Whether InnoDB broke a deadlock by rolling back the transaction `error` came from.
pub(crate) fn is_deadlock(error: &sqlx::Error) -> bool {
    number(error) == Some(DEADLOCK)
}

/// Whether `error` is a lock wait that timed out.
pub(crate) fn is_lock_wait_timeout(error: &sqlx::Error) -> bool {
    number(error) == Some(LOCK_WAIT_TIMEOUT)
}

/// Whether `error` is a duplicate key.
pub(crate) fn is_duplicate(error: &sqlx::Error) -> bool {
    number(error) == Some(DUPLICATE_ENTRY)
}

/// Runs `attempt` until it does not end in a deadlock, at most [`DEADLOCK_RETRIES`] more times.
///
/// Only for work that is whole in itself: a statement in autocommit mode, or a transaction that
/// `attempt` begins and ends. A deadlock rolls back all of it, so running it again cannot
/// repeat anything. Lock wait timeouts are not retried: the lock holder is still there after
/// 50 s, and waiting again would only hold the caller longer; the caller sees the error.
pub(crate) async fn retry_deadlocks<T, F, Fut>(
    what: &'static str,
    mut attempt: F,
) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut retries = 0;
    loop {
        match attempt().await {
            Err(error) if is_deadlock(&error) && retries < DEADLOCK_RETRIES => {
                retries += 1;
                tracing::debug!(%error, retries, "{what}: deadlock, running it again");
                metrics::counter!("courier_mysql_deadlock_retries_total", "what" => what)
                    .increment(1);
            }
            result => return result,
        }
    }
}
