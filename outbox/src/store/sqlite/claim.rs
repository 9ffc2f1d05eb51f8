//! Leasing due rows and recording what became of them, each in a short IMMEDIATE transaction.
//!
//! SQLite has one writer and no `SKIP LOCKED`. Holding the write lock while the batch is published
//! would stop the application's own transactions for as long as the broker takes, so the relay
//! instead *leases* the rows it claims (`leased_until`, `lease_owner`), commits, publishes, and
//! records the outcomes in a second transaction. Other relays skip leased rows, and every later row
//! of a leased key, so per-key order holds across relays. A relay that dies leaves its lease to run
//! out; then the rows are due again and published at least once.
//!
//! Every write after the claim (renewal, release, outcome) touches only rows still leased to this
//! relay (`lease_owner`). A relay that stalled past its lease while publishing (a paused process,
//! a broker call that outlived the renewals) may find its rows claimed by another relay: the
//! outcome it brings back is stale and is dropped, so it neither clears the new owner's lease nor
//! moves a message the new owner delivers to the failure table. The message was then published by
//! both, as at-least-once delivery allows.

use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Row, SqliteConnection};

use super::time::{from_micros, micros, now_micros};
use crate::Message;
use crate::relay::{Claimed, Outcome};

const CLAIM: &str = "\
UPDATE outbox_messages SET leased_until = ?2, lease_owner = ?3
WHERE seq IN (
    SELECT m.seq FROM outbox_messages m
    WHERE m.sent_at IS NULL
      AND m.available_at <= ?1
      AND (m.leased_until IS NULL OR m.leased_until <= ?1)
      AND (m.key IS NULL OR NOT EXISTS (
            SELECT 1 FROM outbox_messages e
            WHERE e.key = m.key AND e.seq < m.seq AND e.sent_at IS NULL
              AND (e.available_at > ?1 OR e.leased_until > ?1)))
    ORDER BY m.seq
    LIMIT ?4)
RETURNING seq, id, topic, key, tag, headers, payload, created_at, available_at, attempts";

fn claimed(row: &SqliteRow) -> sqlx::Result<Claimed> {
    let Json(headers) = row.try_get("headers")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(Claimed {
        seq: row.try_get("seq")?,
        message: Message {
            id: row.try_get("id")?,
            topic: row.try_get("topic")?,
            key: row.try_get("key")?,
            tag: row.try_get("tag")?,
            headers,
            payload: payload.into(),
            created_at: from_micros(row.try_get("created_at")?)?,
            available_at: Some(from_micros(row.try_get("available_at")?)?),
            delay: None,
            attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        },
        // Recording updates rows in place, so the previous error and attempt time stay in them.
        last_error: None,
        last_attempt_at: None,
    })
}

/// Leases up to `limit` due rows to `owner` for `lease`, oldest first, in `conn`'s open
/// transaction.
pub(super) async fn claim(
    conn: &mut SqliteConnection,
    owner: &str,
    lease: Duration,
    limit: usize,
) -> sqlx::Result<Vec<Claimed>> {
    let now = now_micros();
    let rows = sqlx::query(CLAIM)
        .bind(now)
        .bind(now.saturating_add(micros(lease)))
        .bind(owner)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await?;
    let mut claimed = rows.iter().map(claimed).collect::<sqlx::Result<Vec<_>>>()?;
    // RETURNING gives no order; per-key publishing needs sequence order.
    claimed.sort_unstable_by_key(|c| c.seq);
    Ok(claimed)
}

/// The sequence numbers of `rows` as a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn seqs<'a>(rows: impl IntoIterator<Item = &'a Claimed>) -> Json<Vec<i64>> {
    Json(rows.into_iter().map(|row| row.seq).collect())
}

/// Extends the lease of `rows` while they are being published.
pub(super) async fn renew(
    conn: &mut SqliteConnection,
    rows: &[Claimed],
    owner: &str,
    lease: Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox_messages SET leased_until = ?2
         WHERE seq IN (SELECT value FROM json_each(?1)) AND lease_owner = ?3",
    )
    .bind(seqs(rows))
    .bind(now_micros().saturating_add(micros(lease)))
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives leased rows back untouched (shutdown before they were published).
pub(super) async fn release(
    conn: &mut SqliteConnection,
    rows: &[Claimed],
    owner: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox_messages SET leased_until = NULL, lease_owner = NULL
         WHERE seq IN (SELECT value FROM json_each(?1)) AND lease_owner = ?2",
    )
    .bind(seqs(rows))
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes the outcomes of a batch in `conn`'s open transaction, for the rows still leased to
/// `owner`; returns how many rows had been taken over by another relay (and were left alone).
/// `claimed` and `outcomes` are in the same order.
pub(super) async fn record(
    conn: &mut SqliteConnection,
    claimed: &[Claimed],
    outcomes: &[Outcome],
    owner: &str,
    keep_sent: bool,
) -> sqlx::Result<u64> {
    let now = now_micros();
    let mut published = Vec::new();
    let mut held = Vec::new();
    let mut recorded = 0;
    for (row, outcome) in claimed.iter().zip(outcomes) {
        match outcome {
            Outcome::Published => published.push(row),
            Outcome::Held => held.push(row),
            Outcome::Retry { error, delay } => {
                recorded += sqlx::query(
                    "UPDATE outbox_messages
                     SET attempts = attempts + 1, last_error = ?2, last_attempt_at = ?3,
                         available_at = ?4, leased_until = NULL, lease_owner = NULL
                     WHERE seq = ?1 AND lease_owner = ?5",
                )
                .bind(row.seq)
                .bind(error)
                .bind(now)
                .bind(now.saturating_add(micros(*delay)))
                .bind(owner)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            }
            Outcome::Failed { error } => {
                sqlx::query(
                    "INSERT INTO outbox_failures
                         (id, seq, topic, key, tag, headers, payload, created_at, attempts,
                          last_error, failed_at)
                     SELECT id, seq, topic, key, tag, headers, payload, created_at, attempts + 1,
                            ?2, ?3
                     FROM outbox_messages WHERE seq = ?1 AND lease_owner = ?4
                     ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts,
                         last_error = excluded.last_error, failed_at = excluded.failed_at",
                )
                .bind(row.seq)
                .bind(error)
                .bind(now)
                .bind(owner)
                .execute(&mut *conn)
                .await?;
                recorded +=
                    sqlx::query("DELETE FROM outbox_messages WHERE seq = ?1 AND lease_owner = ?2")
                        .bind(row.seq)
                        .bind(owner)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected();
            }
        }
    }
    if !published.is_empty() && keep_sent {
        recorded += sqlx::query(
            "UPDATE outbox_messages
             SET sent_at = ?2, attempts = attempts + 1, last_attempt_at = ?2,
                 leased_until = NULL, lease_owner = NULL
             WHERE seq IN (SELECT value FROM json_each(?1)) AND lease_owner = ?3",
        )
        .bind(seqs(published))
        .bind(now)
        .bind(owner)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    } else if !published.is_empty() {
        recorded += sqlx::query(
            "DELETE FROM outbox_messages
             WHERE seq IN (SELECT value FROM json_each(?1)) AND lease_owner = ?2",
        )
        .bind(seqs(published))
        .bind(owner)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    if !held.is_empty() {
        recorded += sqlx::query(
            "UPDATE outbox_messages SET leased_until = NULL, lease_owner = NULL
             WHERE seq IN (SELECT value FROM json_each(?1)) AND lease_owner = ?2",
        )
        .bind(seqs(held))
        .bind(owner)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok((claimed.len() as u64).saturating_sub(recorded))
}
