//! Idempotency records on Postgres (`courier_inbox.processed`).

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{Executor, PgConnection, PgPool, Postgres, Transaction};

use super::IdempotencySql;

/// Begins the handler's transaction with the record of (`group`, `key`) as its first statement,
/// in one round trip; `None` for a duplicate (nothing left open).
///
/// One simple query, `INSERT ...; BEGIN`: Postgres runs the statements of a multi-statement
/// query in an implicit transaction, and a `BEGIN` in it turns that into a regular transaction
/// that includes the statements before it (the protocol's "Multiple Statements in a Simple
/// Query"). So on success the record is in the open transaction, as if inserted after `BEGIN`;
/// on any error the `BEGIN` never runs and the implicit transaction rolls back, so the pooled
/// connection goes back idle, not in an aborted transaction (a failing `BEGIN; INSERT ...` would
/// leave one, which the pool would hand to the next user). A duplicate is the primary key's
/// violation (23505) rather than `ON CONFLICT DO NOTHING`, since sqlx returns nothing of the
/// statement that begins a transaction; like the conflict clause, the insert first waits for a
/// concurrent transaction holding the key, and goes in if that one rolls back. A simple query
/// takes no parameters: the values go in as escaped literals ([`literal`]).
pub(crate) async fn begin_recorded(
    pool: &PgPool,
    group: &str,
    key: &str,
) -> Result<Option<Transaction<'static, Postgres>>, sqlx::Error> {
    let statement = format!(
        "INSERT INTO courier_inbox.processed (consumer_group, key) VALUES ({}, {}); BEGIN",
        literal(group)?,
        literal(key)?
    );
    match pool.begin_with(statement).await {
        Ok(tx) => Ok(Some(tx)),
        Err(sqlx::Error::Database(error))
            if error.code().as_deref() == Some("23505") && error.table() == Some("processed") =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Checks that the transaction is still open and not aborted, and commits it, in one round trip:
/// `SAVEPOINT courier_commit_check; COMMIT; BEGIN`. A savepoint can only be set inside a live
/// transaction block, so the first statement fails when the handler's transaction cannot commit
/// what it holds, and the rest of the query is skipped (the answer is `false`, rolled back):
///
/// - a failed statement aborted it (25P02), and its `COMMIT` would roll back without an error
///   (see [`IdempotencySql::idempotency_still_held`]);
/// - the handler ended it itself with `ROLLBACK` (or `COMMIT`) on its [`Tx`](crate::Tx) (25P01):
///   the record went with it (or was committed early), and a `COMMIT` would only warn that no
///   transaction is in progress.
///
/// It costs about what a `SELECT 1` would, without a row to send back. sqlx does not know that the
/// query committed, so the trailing `BEGIN` opens an empty transaction for sqlx's own rollback
/// when `tx` is dropped: queued, that goes out with the pool's check of the returned connection,
/// not as a round trip of its own (after a bare `COMMIT` it would find no transaction, and leave a
/// warning in the server's log for every delivery).
pub(crate) async fn commit_recorded(
    mut tx: Transaction<'static, Postgres>,
) -> Result<bool, sqlx::Error> {
    let committed = check_and_commit(&mut tx).await;
    match committed {
        Ok(true) => drop(tx),
        Ok(false) => {
            let _ = tx.rollback().await;
        }
        // The commit itself failed (a deferred constraint, a serialization failure, a lost
        // connection): not acked; dropping rolls back whatever is left.
        Err(_) => drop(tx),
    }
    committed
}

async fn check_and_commit(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    still_open(
        conn.execute("SAVEPOINT courier_commit_check; COMMIT; BEGIN")
            .await,
    )
}

/// The answer of a statement that needs a live transaction block: `false` when the transaction
/// was aborted (25P02) or is no longer open (25P01, "can only be used in transaction blocks").
fn still_open<T>(answer: Result<T, sqlx::Error>) -> Result<bool, sqlx::Error> {
    match answer {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("25P02" | "25P01")) =>
        {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// `value` as a Postgres string literal: an escape string (`E'...'`), with its backslashes and
/// quotes escaped, so it reads the same whatever `standard_conforming_strings` says. A NUL cannot
/// be in a Postgres text value (nor in a simple query), so it is refused.
fn literal(value: &str) -> Result<String, sqlx::Error> {
    if value.contains('\0') {
        return Err(sqlx::Error::Encode(
            format!(
                "the idempotency record's group or key {value:?} contains a NUL character, which \
                 a Postgres text value cannot hold; derive the key without it"
            )
            .into(),
        ));
    }
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

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
        // writes and the record gone. A savepoint tells, and also tells a transaction the handler
        // ended itself (see `commit_recorded`, which does the same check with the commit).
        still_open(conn.execute("SAVEPOINT courier_commit_check").await)
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
