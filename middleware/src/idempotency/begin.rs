//! Beginning the handler's transaction with its idempotency records, again when the database
//! rolled it back to break a deadlock before anything else ran in it.

use std::collections::HashSet;

use sqlx::{Pool, Transaction};

use crate::TxDatabase;

/// How many times a transaction whose record insert lost a deadlock is begun again before the
/// delivery fails (and is redelivered).
const RESTARTS: u32 = 5;

/// Begins a write transaction and inserts the record of (`group`, `key`); `None` for a duplicate
/// (nothing left open). Restarts on a
/// [`restartable`](crate::database::sealed::Dialect::restartable) error: the record is the
/// transaction's first statement, so the rolled-back transaction held nothing else and beginning
/// it again repeats nothing.
pub(super) async fn begin_recorded<DB: TxDatabase>(
    pool: &Pool<DB>,
    group: &str,
    key: &str,
) -> Result<Option<Transaction<'static, DB>>, sqlx::Error> {
    let mut restarts = 0;
    loop {
        match DB::begin_recorded_once(pool, group, key).await {
            Err(error) if DB::restartable(&error) && restarts < RESTARTS => {
                restarts += 1;
                restarted(&error, restarts);
            }
            done => return done,
        }
    }
}

/// [`begin_recorded`] for the records of a batch; returns the pairs that were new.
pub(super) async fn begin_recorded_many<DB: TxDatabase>(
    pool: &Pool<DB>,
    keys: &[(String, String)],
) -> Result<(Transaction<'static, DB>, HashSet<(String, String)>), sqlx::Error> {
    let mut restarts = 0;
    loop {
        let mut tx = DB::begin_write(pool).await?;
        match DB::idempotency_record_many(&mut tx, keys).await {
            Ok(fresh) => return Ok((tx, fresh)),
            Err(error) if DB::restartable(&error) && restarts < RESTARTS => {
                restarts += 1;
                restarted(&error, restarts);
                let _ = tx.rollback().await;
            }
            Err(error) => return Err(error),
        }
    }
}

fn restarted(error: &sqlx::Error, restarts: u32) {
    tracing::debug!(%error, restarts, "idempotency record: the database rolled the transaction \
        back to break a deadlock before the handler ran; beginning it again");
    metrics::counter!("courier_consume_record_restarts_total").increment(1);
}

/// The error of a delivery whose transaction failed or was rolled back while the handler ran,
/// found before the commit: nothing is committed under the record, so it is not acked.
pub(super) fn transaction_lost() -> tower::BoxError {
    "the handler returned Ok, but its transaction had already failed (Postgres aborts it on a \
     statement error; MySQL rolls it back to break a deadlock, error 1213), so neither its writes \
     nor the idempotency record would commit: the delivery is not acked and will be redelivered; \
     return database errors from the handler (`?`) instead of ignoring them (on MySQL, statements \
     run after that error were committed one by one in autocommit mode)"
        .into()
}
