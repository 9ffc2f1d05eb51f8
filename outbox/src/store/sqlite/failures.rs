//! The failure table's SQL on SQLite (`outbox_failures`).

use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Acquire, Executor, QueryBuilder, Row, Sqlite};

use super::time::{from_micros, to_micros};
use crate::{FailedMessage, FailureFilter, Message, ReplayReport};

/// Appends `SELECT id FROM outbox_failures WHERE … ORDER BY … LIMIT …`.
fn push_selection(filter: &FailureFilter, query: &mut QueryBuilder<'_, Sqlite>) {
    query.push("SELECT id FROM outbox_failures WHERE 1");
    if let Some(ids) = &filter.ids {
        if ids.is_empty() {
            query.push(" AND 0");
        } else {
            query.push(" AND id IN (");
            let mut list = query.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            query.push(")");
        }
    }
    if let Some(topic) = &filter.topic {
        query.push(" AND topic = ").push_bind(topic.clone());
    }
    if let Some(key) = &filter.key {
        query.push(" AND key = ").push_bind(key.clone());
    }
    if let Some(at) = filter.failed_after {
        query.push(" AND failed_at >= ").push_bind(to_micros(at));
    }
    if let Some(at) = filter.failed_before {
        query.push(" AND failed_at < ").push_bind(to_micros(at));
    }
    if let Some(text) = &filter.error_contains {
        query
            .push(" AND instr(lower(last_error), lower(")
            .push_bind(text.clone())
            .push(")) > 0");
    }
    query.push(" ORDER BY failed_at, seq");
    if let Some(limit) = filter.limit {
        query.push(" LIMIT ").push_bind(limit);
    }
}

fn failed_message(row: &SqliteRow) -> sqlx::Result<FailedMessage> {
    let Json(headers) = row.try_get("headers")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(FailedMessage {
        message: Message {
            id: row.try_get("id")?,
            topic: row.try_get("topic")?,
            key: row.try_get("key")?,
            tag: row.try_get("tag")?,
            headers,
            payload: payload.into(),
            created_at: from_micros(row.try_get("created_at")?)?,
            available_at: None,
            delay: None,
            attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        },
        last_error: row.try_get("last_error")?,
        failed_at: from_micros(row.try_get("failed_at")?)?,
    })
}

pub(super) async fn list<'e, E>(
    executor: E,
    filter: &FailureFilter,
) -> sqlx::Result<Vec<FailedMessage>>
where
    E: Executor<'e, Database = Sqlite>,
{
    let mut query = QueryBuilder::new(
        "SELECT id, topic, key, tag, headers, payload, created_at, attempts, last_error, failed_at
         FROM outbox_failures WHERE id IN (",
    );
    push_selection(filter, &mut query);
    query.push(") ORDER BY failed_at, seq");
    let rows = query.build().fetch_all(executor).await?;
    rows.iter().map(failed_message).collect()
}

/// Three statements in one transaction (a savepoint inside the caller's): SQLite has no
/// data-modifying CTE. The insert comes first, so the transaction takes the write lock before it
/// reads anything (a read first could fail with "database is locked" against another writer);
/// from then on it is the only writer. The rows the insert added have the highest sequence
/// numbers (`AUTOINCREMENT` never hands out a lower one), which tells the failures it moved from
/// those whose id was already in the outbox: the first are deleted, the second kept and reported.
/// The selection is evaluated twice on the same data, so both see the same rows. Like an insert,
/// a replay wakes the relays of this process (Postgres: the insert trigger's NOTIFY).
pub(super) async fn replay<'a, A>(conn: A, filter: &FailureFilter) -> sqlx::Result<ReplayReport>
where
    A: Acquire<'a, Database = Sqlite>,
{
    let mut tx = conn.begin().await?;
    let mut insert = QueryBuilder::new(
        "INSERT INTO outbox_messages (id, topic, key, tag, headers, payload, created_at, available_at)
         SELECT id, topic, key, tag, headers, payload, created_at, ",
    );
    insert
        .push_bind(super::time::now_micros())
        .push(" FROM outbox_failures WHERE id IN (");
    push_selection(filter, &mut insert);
    insert.push(") ORDER BY seq ON CONFLICT (id) DO NOTHING RETURNING seq");
    let added: Vec<i64> = insert.build_query_scalar().fetch_all(&mut *tx).await?;
    // Every outbox row at or above this sequence number was added just now.
    let first_added = added.iter().copied().min().unwrap_or(i64::MAX);
    let mut conflicting = QueryBuilder::new("SELECT id FROM outbox_failures WHERE id IN (");
    push_selection(filter, &mut conflicting);
    conflicting
        .push(") AND id IN (SELECT id FROM outbox_messages WHERE seq < ")
        .push_bind(first_added)
        .push(") ORDER BY failed_at, seq");
    let conflicts: Vec<uuid::Uuid> = conflicting.build_query_scalar().fetch_all(&mut *tx).await?;
    if !added.is_empty() {
        sqlx::query(
            "DELETE FROM outbox_failures
             WHERE id IN (SELECT id FROM outbox_messages WHERE seq >= ?1)",
        )
        .bind(first_added)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if !added.is_empty() {
        // Replayed rows are new outbox rows: wake this process's relays as the writer does.
        super::SIGNAL.enqueued();
    }
    Ok(ReplayReport {
        replayed: added.len() as u64,
        conflicts,
    })
}

pub(super) async fn purge<'e, E>(executor: E, filter: &FailureFilter) -> sqlx::Result<u64>
where
    E: Executor<'e, Database = Sqlite>,
{
    let mut query = QueryBuilder::new("DELETE FROM outbox_failures WHERE id IN (");
    push_selection(filter, &mut query);
    query.push(")");
    let done = query.build().execute(executor).await?;
    Ok(done.rows_affected())
}
