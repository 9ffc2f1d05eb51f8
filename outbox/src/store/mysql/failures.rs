//! The failure table's SQL on MySQL (`outbox_failures`).
//!
//! MySQL allows neither `LIMIT` inside `IN (…)` nor a subquery on the table a `DELETE` modifies,
//! so the selection is a plain `WHERE … ORDER BY … LIMIT` on `outbox_failures` itself (a
//! single-table `SELECT` or `DELETE` takes all three), and a replay first reads the ids it moves.

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::{Acquire, Executor, MySql, QueryBuilder, Row};
use uuid::Uuid;

use super::columns;
use crate::{FailedMessage, FailureFilter, Message, ReplayReport};

/// How many ids one statement of a replay names.
const IDS_PER_STATEMENT: usize = 500;

/// Appends ` WHERE … ORDER BY failed_at, seq LIMIT …` for `filter`.
fn push_selection(filter: &FailureFilter, query: &mut QueryBuilder<'_, MySql>) {
    query.push(" WHERE 1 = 1");
    if let Some(ids) = &filter.ids {
        if ids.is_empty() {
            query.push(" AND 1 = 0");
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
        query.push(" AND `key` = ").push_bind(key.clone());
    }
    if let Some(at) = filter.failed_after {
        query.push(" AND failed_at >= ").push_bind(at);
    }
    if let Some(at) = filter.failed_before {
        query.push(" AND failed_at < ").push_bind(at);
    }
    if let Some(text) = &filter.error_contains {
        // The column's collation is binary; compare both sides lowercased, as the other stores do.
        query
            .push(" AND LOCATE(LOWER(")
            .push_bind(text.clone())
            .push("), LOWER(last_error)) > 0");
    }
    query.push(" ORDER BY failed_at, seq");
    if let Some(limit) = filter.limit {
        query.push(" LIMIT ").push_bind(limit.max(0));
    }
}

fn failed_message(row: &MySqlRow) -> sqlx::Result<FailedMessage> {
    let payload: Vec<u8> = row.try_get("payload")?;
    Ok(FailedMessage {
        message: Message {
            id: row.try_get("id")?,
            topic: columns::text(row, "topic")?,
            key: columns::optional_text(row, "key")?,
            tag: columns::optional_text(row, "tag")?,
            headers: columns::headers(row)?,
            payload: payload.into(),
            created_at: row.try_get::<DateTime<Utc>, _>("created_at")?,
            available_at: None,
            delay: None,
            attempts: columns::attempts(row)?,
        },
        last_error: row.try_get("last_error")?,
        failed_at: row.try_get("failed_at")?,
    })
}

pub(super) async fn list<'e, E>(
    executor: E,
    filter: &FailureFilter,
) -> sqlx::Result<Vec<FailedMessage>>
where
    E: Executor<'e, Database = MySql>,
{
    let mut query = QueryBuilder::new(
        "SELECT id, topic, `key`, tag, headers, payload, created_at, attempts, last_error, failed_at
         FROM outbox_failures",
    );
    push_selection(filter, &mut query);
    let rows = query.build().fetch_all(executor).await?;
    rows.iter().map(failed_message).collect()
}

/// `head (?, ?, …) tail` for one chunk of ids.
fn with_ids<'q>(head: &str, ids: &'q [Uuid], tail: &str) -> QueryBuilder<'q, MySql> {
    let mut query = QueryBuilder::new(head);
    query.push(" (");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(")").push(tail);
    query
}

/// In one transaction (a savepoint inside the caller's): lock the selected failures (`FOR
/// UPDATE`, so two concurrent replays do not both move one), find which ids are already in the
/// outbox (kept, and reported as conflicts), copy the others into the outbox in their original
/// order, due now, and delete them from the failure table. Like an insert, a replay wakes this
/// process's relays.
pub(super) async fn replay<'a, A>(conn: A, filter: &FailureFilter) -> sqlx::Result<ReplayReport>
where
    A: Acquire<'a, Database = MySql>,
{
    let mut tx = conn.begin().await?;
    let mut select = QueryBuilder::new("SELECT id FROM outbox_failures");
    push_selection(filter, &mut select);
    select.push(" FOR UPDATE");
    let selected: Vec<Uuid> = select.build_query_scalar().fetch_all(&mut *tx).await?;
    let mut present = std::collections::HashSet::new();
    for chunk in selected.chunks(IDS_PER_STATEMENT) {
        let found: Vec<Uuid> = with_ids("SELECT id FROM outbox_messages WHERE id IN", chunk, "")
            .build_query_scalar()
            .fetch_all(&mut *tx)
            .await?;
        present.extend(found);
    }
    let (conflicts, moved): (Vec<Uuid>, Vec<Uuid>) =
        selected.into_iter().partition(|id| present.contains(id));
    let mut replayed = 0;
    for chunk in moved.chunks(IDS_PER_STATEMENT) {
        replayed += with_ids(
            "INSERT INTO outbox_messages
                 (id, topic, `key`, tag, headers, payload, created_at, available_at)
             SELECT id, topic, `key`, tag, headers, payload, created_at, UTC_TIMESTAMP(6)
             FROM outbox_failures WHERE id IN",
            chunk,
            " ORDER BY seq",
        )
        .build()
        .execute(&mut *tx)
        .await?
        .rows_affected();
        with_ids("DELETE FROM outbox_failures WHERE id IN", chunk, "")
            .build()
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if replayed > 0 {
        // Replayed rows are new outbox rows: wake this process's relays as the writer does.
        super::SIGNAL.enqueued();
    }
    Ok(ReplayReport {
        replayed,
        conflicts,
    })
}

pub(super) async fn purge<'e, E>(executor: E, filter: &FailureFilter) -> sqlx::Result<u64>
where
    E: Executor<'e, Database = MySql>,
{
    let mut query = QueryBuilder::new("DELETE FROM outbox_failures");
    push_selection(filter, &mut query);
    let done = query.build().execute(executor).await?;
    Ok(done.rows_affected())
}
