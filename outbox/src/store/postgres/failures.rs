//! The failure table's SQL on Postgres (`outbox.failures`).

use sqlx::types::Json;
use sqlx::{Acquire, Executor, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::{FailedMessage, FailureFilter, Message, ReplayReport};

/// Appends `SELECT id FROM outbox.failures WHERE … ORDER BY … LIMIT …`.
fn push_selection(filter: &FailureFilter, query: &mut QueryBuilder<'_, Postgres>) {
    query.push("SELECT id FROM outbox.failures WHERE true");
    if let Some(ids) = &filter.ids {
        query
            .push(" AND id = ANY(")
            .push_bind(ids.clone())
            .push(")");
    }
    if let Some(topic) = &filter.topic {
        query.push(" AND topic = ").push_bind(topic.clone());
    }
    if let Some(key) = &filter.key {
        query.push(" AND key = ").push_bind(key.clone());
    }
    if let Some(at) = filter.failed_after {
        query.push(" AND failed_at >= ").push_bind(at);
    }
    if let Some(at) = filter.failed_before {
        query.push(" AND failed_at < ").push_bind(at);
    }
    if let Some(text) = &filter.error_contains {
        query
            .push(" AND strpos(lower(last_error), lower(")
            .push_bind(text.clone())
            .push(")) > 0");
    }
    query.push(" ORDER BY failed_at, seq");
    if let Some(limit) = filter.limit {
        query.push(" LIMIT ").push_bind(limit);
    }
}

pub(super) async fn list<'e, E>(
    executor: E,
    filter: &FailureFilter,
) -> sqlx::Result<Vec<FailedMessage>>
where
    E: Executor<'e, Database = Postgres>,
{
    let mut query = QueryBuilder::new(
        "SELECT id, topic, key, tag, headers, payload, created_at, attempts, last_error, failed_at
         FROM outbox.failures WHERE id IN (",
    );
    push_selection(filter, &mut query);
    query.push(") ORDER BY failed_at, seq");
    let rows = query.build().fetch_all(executor).await?;
    rows.into_iter()
        .map(|row| {
            let Json(headers) = row.try_get("headers")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            let attempts: i32 = row.try_get("attempts")?;
            Ok(FailedMessage {
                message: Message {
                    id: row.try_get("id")?,
                    topic: row.try_get("topic")?,
                    key: row.try_get("key")?,
                    tag: row.try_get("tag")?,
                    headers,
                    payload: payload.into(),
                    created_at: row.try_get("created_at")?,
                    available_at: None,
                    delay: None,
                    attempts: attempts.max(0) as u32,
                },
                last_error: row.try_get("last_error")?,
                failed_at: row.try_get("failed_at")?,
            })
        })
        .collect()
}

/// One statement: the selected failures are locked (so a concurrent replay waits, then skips
/// them), inserted into the outbox unless their id is already there, and deleted if they were.
/// The ones whose insert conflicted stay, and are reported.
pub(super) async fn replay<'a, A>(conn: A, filter: &FailureFilter) -> sqlx::Result<ReplayReport>
where
    A: Acquire<'a, Database = Postgres>,
{
    let mut query = QueryBuilder::new(
        "WITH selected AS (
             SELECT id, seq, failed_at FROM outbox.failures WHERE id IN (",
    );
    push_selection(filter, &mut query);
    query.push(
        ") FOR UPDATE),
         inserted AS (
             INSERT INTO outbox.messages (id, topic, key, tag, headers, payload, created_at)
             SELECT f.id, f.topic, f.key, f.tag, f.headers, f.payload, f.created_at
             FROM outbox.failures f JOIN selected USING (id) ORDER BY f.seq
             ON CONFLICT (id) DO NOTHING
             RETURNING id),
         deleted AS (
             DELETE FROM outbox.failures WHERE id IN (SELECT id FROM inserted))
         SELECT (SELECT count(*) FROM inserted) AS replayed,
                ARRAY(SELECT id FROM selected WHERE id NOT IN (SELECT id FROM inserted)
                      ORDER BY failed_at, seq) AS conflicts",
    );
    let mut conn = conn.acquire().await?;
    let row = query.build().fetch_one(&mut *conn).await?;
    let replayed: i64 = row.try_get("replayed")?;
    let conflicts: Vec<Uuid> = row.try_get("conflicts")?;
    Ok(ReplayReport {
        replayed: replayed.max(0) as u64,
        conflicts,
    })
}

pub(super) async fn purge<'e, E>(executor: E, filter: &FailureFilter) -> sqlx::Result<u64>
where
    E: Executor<'e, Database = Postgres>,
{
    let mut query = QueryBuilder::new("DELETE FROM outbox.failures WHERE id IN (");
    push_selection(filter, &mut query);
    query.push(")");
    let done = query.build().execute(executor).await?;
    Ok(done.rows_affected())
}
