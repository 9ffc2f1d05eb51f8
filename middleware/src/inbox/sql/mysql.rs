//! The durable inbox on MySQL / MariaDB (tables `courier_inbox_*`; times from the server's
//! `UTC_TIMESTAMP(6)`).
//!
//! Neither MySQL 8 nor MariaDB has `UPDATE ... RETURNING` or data-modifying CTEs, so the claim and
//! the dead-lettering are short transactions of a few statements, at READ COMMITTED: no gap locks,
//! so the inserts of [`Inbox::store`](crate::Inbox::store) never wait on them. A deadlock there is
//! retried (the transaction is the middleware's own and whole); a lock wait timeout is returned and
//! the worker tries again after its poll interval.
//!
//! The handler's transaction marks its row done first thing, which also locks it, and checks the
//! mark is still there before it commits: InnoDB rolls a transaction back by itself when it breaks
//! a deadlock, and the connection goes on in autocommit mode, so a handler that swallowed that
//! error would otherwise have the worker commit nothing and (on the other stores' order: mark,
//! then commit) mark the row done in autocommit, losing the handler's writes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::Message;
use sqlx::mysql::MySqlRow;
use sqlx::types::Json;
use sqlx::{Executor, MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};
use uuid::Uuid;

use super::{Claimed, InboxSql, Lease};
use crate::Delivery;
use crate::inbox::{InboxDeadLetter, Stored};
use crate::mysql::conflict::{is_duplicate, retry_deadlocks};
use crate::mysql::{PURGE_BATCH, begin_read_committed, micros};

/// A column that holds UTF-8 text, read as bytes: the server flags `VARBINARY` and `_bin`
/// collation columns alike as binary, which sqlx does not decode as `String`.
fn text(row: &MySqlRow, column: &str) -> Result<String, sqlx::Error> {
    optional_text(row, column)?.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: "unexpected NULL".into(),
    })
}

/// [`text`] for a nullable column.
fn optional_text(row: &MySqlRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    bytes
        .map(String::from_utf8)
        .transpose()
        .map_err(|error| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(error),
        })
}

fn message_of(row: &MySqlRow) -> Result<Message, sqlx::Error> {
    let Json(headers) = row.try_get("headers")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let mut message = Message::new(text(row, "topic")?, payload).with_id(row.try_get("id")?);
    message.key = optional_text(row, "key")?;
    message.tag = optional_text(row, "tag")?;
    message.headers = headers;
    message.created_at = row.try_get("created_at")?;
    Ok(message)
}

/// The row is unfinished and still carries the claim's lease (`seq`, then the attempts and the
/// lease end, bound by [`holds`]).
const HOLDS: &str = "seq = ? AND done_at IS NULL AND attempts = ? AND available_at = ?";

/// Binds [`HOLDS`]' parameters.
fn holds<'q>(
    query: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    seq: i64,
    lease: &Lease,
) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    query.bind(seq).bind(attempts(lease)).bind(lease.until)
}

/// The column is an `INT`: the attempts the claim counted, as bound back.
fn attempts(lease: &Lease) -> i32 {
    i32::try_from(lease.attempts).unwrap_or(i32::MAX)
}

/// The columns copied between the inbox and its dead letters.
const MESSAGE_COLUMNS: &str =
    "consumer_group, id, topic, `key`, tag, headers, payload, created_at, queue, received_at";

impl InboxSql for MySql {
    async fn inbox_insert<'e, E: Executor<'e, Database = Self>>(
        executor: E,
        delivery: &Delivery,
    ) -> Result<Stored, sqlx::Error> {
        let message = &delivery.message;
        // A plain INSERT whose duplicate-key error means "stored already" (`INSERT IGNORE` would
        // also hide a value cut to fit its column). One statement, because the executor may be
        // the caller's transaction and can be used once.
        let inserted = sqlx::query(&format!(
            "INSERT INTO courier_inbox_messages ({MESSAGE_COLUMNS}, available_at)
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) FROM DUAL
             WHERE NOT EXISTS (SELECT 1 FROM courier_inbox_dead_letters
                               WHERE consumer_group = ? AND id = ?)"
        ))
        .bind(delivery.group.as_bytes())
        .bind(message.id)
        .bind(&message.topic)
        .bind(&message.key)
        .bind(&message.tag)
        .bind(Json(&message.headers))
        .bind(message.payload.as_ref())
        .bind(message.created_at)
        .bind(&delivery.queue)
        .bind(delivery.group.as_bytes())
        .bind(message.id)
        .execute(executor)
        .await;
        match inserted {
            Ok(done) if done.rows_affected() == 1 => Ok(Stored::New),
            // Not inserted: its dead letter is there.
            Ok(_) => Ok(Stored::Duplicate),
            Err(error) if is_duplicate(&error) => Ok(Stored::Duplicate),
            Err(error) => Err(error),
        }
    }

    async fn inbox_insert_pooled(
        pool: &MySqlPool,
        delivery: &Delivery,
    ) -> Result<Stored, sqlx::Error> {
        retry_deadlocks("inbox store", || Self::inbox_insert(pool, delivery)).await
    }

    async fn inbox_claim(
        pool: &MySqlPool,
        group: &str,
        lease: Duration,
    ) -> Result<Option<Claimed>, sqlx::Error> {
        retry_deadlocks("inbox claim", || claim(pool, group, lease)).await
    }

    async fn inbox_lock(
        conn: &mut MySqlConnection,
        seq: i64,
        lease: &Lease,
    ) -> Result<bool, sqlx::Error> {
        // Marks the row done at once: the update locks the row (as `FOR UPDATE` would), checks the
        // lease, and leaves the mark `inbox_mark_done` looks for. It commits only with the
        // handler's writes; until then other workers skip the locked row.
        let marked = holds(
            sqlx::query(&format!(
                "UPDATE courier_inbox_messages SET done_at = UTC_TIMESTAMP(6), last_error = NULL
                 WHERE {HOLDS}"
            )),
            seq,
            lease,
        )
        .execute(conn)
        .await?;
        Ok(marked.rows_affected() == 1)
    }

    async fn inbox_mark_done(
        conn: &mut MySqlConnection,
        seq: i64,
        lease: &Lease,
    ) -> Result<bool, sqlx::Error> {
        // Moves the mark to the end of the handler. It matches only the row as `inbox_lock` left
        // it: in the transaction that marked it, or, if InnoDB rolled that transaction back, not
        // at all (the committed row is unmarked, or another worker's by now). Rows matched, not
        // changed: sqlx asks the server for found rows.
        let updated = sqlx::query(
            "UPDATE courier_inbox_messages SET done_at = UTC_TIMESTAMP(6)
             WHERE seq = ? AND done_at IS NOT NULL AND attempts = ? AND available_at = ?",
        )
        .bind(seq)
        .bind(attempts(lease))
        .bind(lease.until)
        .execute(&mut *conn)
        .await?;
        if updated.rows_affected() == 1 {
            return Ok(true);
        }
        // Still this claim's, but not marked: the transaction was rolled back under the handler.
        let ours = holds(
            sqlx::query(&format!(
                "SELECT 1 FROM courier_inbox_messages WHERE {HOLDS}"
            )),
            seq,
            lease,
        )
        .fetch_optional(conn)
        .await?;
        match ours {
            Some(_) => Err(sqlx::Error::Protocol(
                "the inbox handler returned Ok, but the database had rolled its transaction back \
                 meanwhile (MySQL does so when it breaks a deadlock, error 1213, which the handler \
                 did not return): nothing of the attempt is committed, and the row is taken again \
                 when its lease ends; statements the handler ran after that error were committed \
                 one by one in autocommit mode, so return database errors from the handler"
                    .to_owned(),
            )),
            None => Ok(false),
        }
    }

    async fn inbox_retry_later(
        pool: &MySqlPool,
        seq: i64,
        lease: &Lease,
        delay: Duration,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "UPDATE courier_inbox_messages
             SET available_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, last_error = ?
             WHERE {HOLDS}"
        );
        let done = retry_deadlocks("inbox retry", || {
            sqlx::query(&sql)
                .bind(micros(delay))
                .bind(error)
                .bind(seq)
                .bind(attempts(lease))
                .bind(lease.until)
                .execute(pool)
        })
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn inbox_dead_letter(
        pool: &MySqlPool,
        seq: i64,
        lease: &Lease,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        retry_deadlocks("inbox dead letter", || dead_letter(pool, seq, lease, error)).await
    }

    async fn inbox_pending(pool: &MySqlPool, group: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM courier_inbox_messages
             WHERE consumer_group = ? AND done_at IS NULL",
        )
        .bind(group.as_bytes())
        .fetch_one(pool)
        .await
    }

    async fn inbox_dead_letters(
        pool: &MySqlPool,
        group: &str,
    ) -> Result<Vec<InboxDeadLetter>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM courier_inbox_dead_letters
             WHERE consumer_group = ? ORDER BY failed_at, id",
        )
        .bind(group.as_bytes())
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get("attempts")?;
                Ok(InboxDeadLetter {
                    group: text(row, "consumer_group")?,
                    message: message_of(row)?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    last_error: text(row, "last_error")?,
                    failed_at: row.try_get("failed_at")?,
                })
            })
            .collect()
    }

    async fn inbox_replay(pool: &MySqlPool, group: &str, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
        let mut moved = 0;
        for chunk in ids.chunks(PURGE_BATCH) {
            moved += retry_deadlocks("inbox replay", || replay(pool, group, chunk)).await?;
        }
        Ok(moved)
    }

    async fn inbox_purge_done(pool: &MySqlPool, age: Duration) -> Result<u64, sqlx::Error> {
        let cutoff: DateTime<Utc> =
            sqlx::query_scalar("SELECT UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND")
                .bind(micros(age))
                .fetch_one(pool)
                .await?;
        let mut purged = 0;
        loop {
            // As for the idempotency records: a lock-free read picks a batch by primary key, the
            // delete locks those rows only.
            let batch: Vec<i64> = sqlx::query_scalar(
                "SELECT seq FROM courier_inbox_messages
                 WHERE done_at < ? ORDER BY done_at LIMIT ?",
            )
            .bind(cutoff)
            .bind(PURGE_BATCH as u64)
            .fetch_all(pool)
            .await?;
            if batch.is_empty() {
                return Ok(purged);
            }
            purged += retry_deadlocks("inbox purge", || purge(pool, cutoff, &batch)).await?;
            if batch.len() < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }
}

/// One claim: in a READ COMMITTED transaction, lock the oldest due row no one holds, count the
/// attempt and move its lease, by primary key.
async fn claim(
    pool: &MySqlPool,
    group: &str,
    lease: Duration,
) -> Result<Option<Claimed>, sqlx::Error> {
    let mut tx = begin_read_committed(pool).await?;
    let row = sqlx::query(
        "SELECT *, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND AS lease_until
         FROM courier_inbox_messages
         WHERE consumer_group = ? AND done_at IS NULL AND available_at <= UTC_TIMESTAMP(6)
         ORDER BY available_at, seq
         LIMIT 1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(micros(lease))
    .bind(group.as_bytes())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.commit().await?;
        return Ok(None);
    };
    let seq: i64 = row.try_get("seq")?;
    let attempts = i64::from(row.try_get::<i32, _>("attempts")?) + 1;
    let until: DateTime<Utc> = row.try_get("lease_until")?;
    sqlx::query("UPDATE courier_inbox_messages SET attempts = ?, available_at = ? WHERE seq = ?")
        .bind(attempts)
        .bind(until)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut delivery = Delivery::new(message_of(&row)?, group)
        .with_attempt(u32::try_from(attempts).unwrap_or(u32::MAX))
        .with_first_delivered_at(row.try_get("received_at")?);
    delivery.queue = optional_text(&row, "queue")?;
    Ok(Some(Claimed {
        seq,
        lease: Lease { attempts, until },
        delivery,
    }))
}

/// Copies the row to the dead letters and deletes it, in a READ COMMITTED transaction that
/// commits only if the delete found the row still held by this claim. The copy goes first, so
/// that a redelivery being stored at the same time (which reads the dead letters, then the row's
/// unique key) and this move take their locks in the same order.
async fn dead_letter(
    pool: &MySqlPool,
    seq: i64,
    lease: &Lease,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = begin_read_committed(pool).await?;
    let copied = holds(
        sqlx::query(&format!(
            "INSERT INTO courier_inbox_dead_letters
                 ({MESSAGE_COLUMNS}, attempts, last_error, failed_at)
             SELECT {MESSAGE_COLUMNS}, attempts, ?, UTC_TIMESTAMP(6)
             FROM courier_inbox_messages WHERE {HOLDS}"
        ))
        .bind(error),
        seq,
        lease,
    )
    .execute(&mut *tx)
    .await;
    match copied {
        // A dead letter of this message is there already: keep it, still move the row out.
        Err(error) if is_duplicate(&error) => {}
        Err(error) => return Err(error),
        Ok(_) => {}
    }
    let moved = holds(
        sqlx::query(&format!("DELETE FROM courier_inbox_messages WHERE {HOLDS}")),
        seq,
        lease,
    )
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Moves the dead letters of `ids` back into the inbox, due at once with zero attempts.
async fn replay(pool: &MySqlPool, group: &str, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    let mut tx = begin_read_committed(pool).await?;
    let mut copy = QueryBuilder::<MySql>::new(format!(
        "INSERT INTO courier_inbox_messages ({MESSAGE_COLUMNS}, available_at)
         SELECT {MESSAGE_COLUMNS}, UTC_TIMESTAMP(6) FROM courier_inbox_dead_letters
         WHERE consumer_group = "
    ));
    copy.push_bind(group.as_bytes());
    copy.push(" AND id IN (");
    let mut ids_list = copy.separated(", ");
    for id in ids {
        ids_list.push_bind(*id);
    }
    copy.push(
        ") ON DUPLICATE KEY UPDATE attempts = 0, available_at = UTC_TIMESTAMP(6), done_at = NULL,
                                   last_error = NULL",
    );
    copy.build().execute(&mut *tx).await?;
    let mut delete = QueryBuilder::<MySql>::new(
        "DELETE FROM courier_inbox_dead_letters WHERE consumer_group = ",
    );
    delete.push_bind(group.as_bytes());
    delete.push(" AND id IN (");
    let mut ids_list = delete.separated(", ");
    for id in ids {
        ids_list.push_bind(*id);
    }
    delete.push(")");
    let moved = delete.build().execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(moved)
}

/// Deletes the rows of `batch` still processed before `cutoff`.
async fn purge(pool: &MySqlPool, cutoff: DateTime<Utc>, batch: &[i64]) -> Result<u64, sqlx::Error> {
    let mut tx = begin_read_committed(pool).await?;
    // `FORCE INDEX`, as for the idempotency records: never a scan that waits on open rows.
    let mut delete = QueryBuilder::<MySql>::new(
        "DELETE m FROM courier_inbox_messages AS m FORCE INDEX (PRIMARY) WHERE m.done_at < ",
    );
    delete.push_bind(cutoff);
    delete.push(" AND m.seq IN (");
    let mut seqs = delete.separated(", ");
    for seq in batch {
        seqs.push_bind(*seq);
    }
    delete.push(")");
    let deleted = delete.build().execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(deleted)
}
