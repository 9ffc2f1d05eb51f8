//! Deadlocks (1213) and lock-wait timeouts (1205) are retried: both roll back (the whole
//! transaction for a deadlock; the statement for a lock-wait timeout, which the relay's
//! transactions then roll back in full), so running the transaction again is safe. sqlx reports
//! both as a generic database error; only the MySQL error number tells them apart.

use std::time::Duration;

use sqlx::mysql::MySqlDatabaseError;

/// ER_LOCK_DEADLOCK: InnoDB chose this transaction as the deadlock victim and rolled it back.
pub(super) const DEADLOCK: u16 = 1213;
/// ER_LOCK_WAIT_TIMEOUT: a row lock was not granted within `innodb_lock_wait_timeout`.
pub(super) const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// How many times one relay transaction runs before the error goes to the relay (which then
/// backs off and reconnects like after any database error).
const ATTEMPTS: u32 = 8;
const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// The MySQL error number of `error`, if it came from the server.
pub(super) fn error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// Whether running the same transaction again may succeed.
pub(super) fn is_transient(error: &sqlx::Error) -> bool {
    matches!(error_number(error), Some(DEADLOCK | LOCK_WAIT_TIMEOUT))
}

/// Runs `work` until it succeeds, fails with anything but a deadlock or lock-wait timeout, or has
/// been tried [`ATTEMPTS`] times; pauses between attempts grow and are jittered, so two
/// transactions that deadlocked do not meet again at once.
pub(super) async fn retrying<T, F, Fut>(what: &str, mut work: F) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = sqlx::Result<T>>,
{
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match work().await {
            Err(error) if attempt < ATTEMPTS && is_transient(&error) => {
                metrics::counter!("outbox_relay_lock_retries_total").increment(1);
                tracing::debug!(%error, attempt, what, "lock conflict; running the transaction again");
                let jitter = rand::random_range(0..=pause.as_micros() as u64);
                tokio::time::sleep(pause + Duration::from_micros(jitter)).await;
                pause = pause.saturating_mul(2);
                attempt += 1;
            }
            result => return result,
        }
    }
}
