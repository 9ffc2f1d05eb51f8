//! Claiming due rows and recording what became of them, in one transaction.
//!
//! The claim *deletes* the rows it takes (`DELETE … WHERE seq IN (SELECT … FOR UPDATE SKIP
//! LOCKED) RETURNING …`): the deletion stays invisible until commit, other relays skip the rows as
//! locked, and a relay that dies rolls the deletion back. A published row then costs one tuple
//! write, as in a bare `DELETE … RETURNING` loop. Rows that were not published (retry, held behind
//! a failed key, or kept for a retention period) are inserted again with their original sequence
//! number before the commit; rows that failed for good are inserted into `outbox.failures`.
//!
//! The claim reads the primary key from a [`Cursor`] on, past the entries of rows already deleted
//! (see [`cursor`] for why no row that may still become pending is ever below it).

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use crate::Message;
use crate::relay::{Claimed, Outcome};

mod cursor;

pub(crate) use cursor::Cursor;
use cursor::Horizon;

#[cfg(test)]
mod tests;

// `seq = ANY(ARRAY(…))`, not `seq IN (…)`: for a semi-join the planner weighs a merge join and
// reads the live ends of the primary key to cost it, which walks every dead entry a draining relay
// left at the low end (measured on a 1M backlog: 6-10 ms of planning per claim, more than the
// claim itself). An array parameter is no join, so it plans in well under a millisecond. For the
// same reason the cursor is compared as `(SELECT $3)`: a plain parameter below the statistics'
// lowest value makes the planner read the actual lowest entry of the index, through the dead ones
// (measured: 27-47 ms of planning at a 500k dead prefix, against 1 ms).
//
// The "earlier message backing off" check looks up `(key, available_at > now())` in
// `messages_pending_key_due`: only the key's rows that are not due yet, not every earlier row of
// the key nor every scheduled row in the table. Both comparisons are written as row comparisons
// led by `key` (equal to `m.key` on both sides, so they mean `e.available_at > now()` and
// `e.seq < m.seq`), which only an index that starts with `key` can serve: with plain comparisons
// the planner takes `messages_pending_due (available_at)` whenever the statistics predate the
// scheduled rows (a queue's usual state: ANALYZE saw rows due then and none later, so `> now()`
// falls past the histogram's end and looks like one row), or the primary key for `seq < m.seq`,
// and then walks every scheduled row in the table, or every earlier row, for each candidate
// (measured with 100k scheduled rows of other keys: one claim of 500 took 10-14 s, 3-8 ms so).
// Looking a text key up costs more than a timestamp, though (about 5 µs against 1 µs a
// candidate), so the check runs only if some pending row is not due at all: one look at the end
// of `messages_pending_due`, once per statement. With every row due (a plain backlog) a claim of
// 500 then took 0.9-1.4 ms, against 1.3-2.3 ms for the plain check and 2.7-4.6 ms for the
// per-key lookups.
//
// The last row is what the cursor needs (see `cursor`), read in the same statement so that it
// costs no round trip; it is told from the claimed rows by its NULL `seq`. Its `lowest` sees the
// table as the statement's snapshot does, with the rows this statement claims still in it.
const CLAIM: &str = "\
WITH claimed AS (
    DELETE FROM outbox.messages
    WHERE seq = ANY(ARRAY(
        SELECT m.seq FROM outbox.messages m
        WHERE m.seq >= (SELECT $3::int8)
          AND m.sent_at IS NULL
          AND m.available_at <= now()
          AND (m.partition IS NULL OR m.partition = ANY($1))
          AND (m.key IS NULL
               OR NOT EXISTS (SELECT 1 FROM outbox.messages x
                              WHERE x.sent_at IS NULL AND x.available_at > now())
               OR NOT EXISTS (
                SELECT 1 FROM outbox.messages e
                WHERE e.key = m.key AND e.sent_at IS NULL
                  AND (e.key, e.available_at) > (m.key, now())
                  AND (e.key, e.seq) < (m.key, m.seq)))
        ORDER BY m.seq
        LIMIT $2
        FOR UPDATE SKIP LOCKED))
    RETURNING seq, id, topic, key, tag, headers, payload, created_at, available_at, attempts,
              last_error, last_attempt_at)
SELECT NULL::text[] AS writers, NULL::int8 AS lowest, NULL::int8 AS last_seq, c.* FROM claimed c
UNION ALL
SELECT
    (SELECT array_agg(l.virtualtransaction) FROM pg_locks l
     WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock'
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.relation = 'outbox.messages'::regclass),
    (SELECT p.seq FROM outbox.messages p
     WHERE p.seq >= (SELECT $3::int8) AND p.sent_at IS NULL ORDER BY p.seq LIMIT 1),
    CASE WHEN has_sequence_privilege('outbox.messages_seq_seq', 'SELECT, USAGE')
         THEN pg_sequence_last_value('outbox.messages_seq_seq') END,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL";

/// Takes up to `limit` due rows in `conn`'s open transaction, oldest first, reading the primary
/// key from `cursor` on, and tells `cursor` what the claim saw.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    cursor: &mut Cursor,
    partitions: &[i16],
    limit: usize,
) -> sqlx::Result<Vec<Claimed>> {
    let rows = sqlx::query(CLAIM)
        .bind(partitions)
        .bind(limit as i64)
        .bind(cursor.start())
        .fetch_all(conn)
        .await?;
    let mut claimed = Vec::with_capacity(rows.len().saturating_sub(1));
    for row in rows {
        let seq: Option<i64> = row.try_get("seq")?;
        let Some(seq) = seq else {
            let writers: Option<Vec<String>> = row.try_get("writers")?;
            cursor.observe(Horizon {
                writers: writers.unwrap_or_default(),
                lowest: row.try_get("lowest")?,
                last: row.try_get("last_seq")?,
            });
            continue;
        };
        claimed.push(decode(seq, &row)?);
    }
    // RETURNING gives no order; per-key publishing needs sequence order.
    claimed.sort_unstable_by_key(|c| c.seq);
    Ok(claimed)
}

/// One claimed row.
fn decode(seq: i64, row: &PgRow) -> sqlx::Result<Claimed> {
    let Json(headers) = row.try_get("headers")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(Claimed {
        seq,
        message: Message {
            id: row.try_get("id")?,
            topic: row.try_get("topic")?,
            key: row.try_get("key")?,
            tag: row.try_get("tag")?,
            headers,
            payload: payload.into(),
            created_at: row.try_get("created_at")?,
            available_at: Some(row.try_get("available_at")?),
            delay: None,
            attempts: attempts.max(0) as u32,
        },
        last_error: row.try_get("last_error")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
    })
}

const PUT_BACK: &str = "\
INSERT INTO outbox.messages
    (seq, id, topic, key, tag, headers, payload, created_at, available_at, attempts, last_error,
     last_attempt_at, sent_at)
OVERRIDING SYSTEM VALUE
SELECT seq, id, topic, key, tag, headers, payload, created_at,
       CASE WHEN delay_us IS NULL THEN available_at
            ELSE clock_timestamp() + delay_us * interval '1 microsecond' END,
       attempts, last_error,
       CASE WHEN attempted THEN clock_timestamp() ELSE last_attempt_at END,
       CASE WHEN sent THEN now() END
FROM UNNEST($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::bytea[],
            $8::timestamptz[], $9::timestamptz[], $10::int8[], $11::int4[], $12::text[],
            $13::timestamptz[], $14::bool[], $15::bool[])
     AS u(seq, id, topic, key, tag, headers, payload, created_at, available_at, delay_us, attempts,
          last_error, last_attempt_at, attempted, sent)";

const MOVE_TO_FAILURES: &str = "\
INSERT INTO outbox.failures
    (id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error, failed_at)
SELECT id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error, clock_timestamp()
FROM UNNEST($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::bytea[],
            $8::timestamptz[], $9::int4[], $10::text[])
     AS u(seq, id, topic, key, tag, headers, payload, created_at, attempts, last_error)
ON CONFLICT (id) DO UPDATE SET
    attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, failed_at = EXCLUDED.failed_at";

/// One row to write back, as columns.
#[derive(Default)]
struct Rows<'a> {
    seq: Vec<i64>,
    id: Vec<uuid::Uuid>,
    topic: Vec<&'a str>,
    key: Vec<Option<&'a str>>,
    tag: Vec<Option<&'a str>>,
    headers: Vec<Json<&'a std::collections::BTreeMap<String, String>>>,
    payload: Vec<&'a [u8]>,
    created_at: Vec<DateTime<Utc>>,
    available_at: Vec<Option<DateTime<Utc>>>,
    delay_us: Vec<Option<i64>>,
    attempts: Vec<i32>,
    last_error: Vec<Option<&'a str>>,
    last_attempt_at: Vec<Option<DateTime<Utc>>>,
    attempted: Vec<bool>,
    sent: Vec<bool>,
}

impl<'a> Rows<'a> {
    fn push(&mut self, row: &'a Claimed, attempted: bool, error: Option<&'a str>) {
        let message = &row.message;
        self.seq.push(row.seq);
        self.id.push(message.id);
        self.topic.push(&message.topic);
        self.key.push(message.key.as_deref());
        self.tag.push(message.tag.as_deref());
        self.headers.push(Json(&message.headers));
        self.payload.push(&message.payload);
        self.created_at.push(message.created_at);
        self.available_at.push(message.available_at);
        let attempts = message.attempts + u32::from(attempted);
        self.attempts
            .push(i32::try_from(attempts).unwrap_or(i32::MAX));
        self.last_error.push(error.or(row.last_error.as_deref()));
        self.last_attempt_at.push(row.last_attempt_at);
        self.attempted.push(attempted);
    }
}

/// Writes the outcomes of a batch in `conn`'s open transaction. `claimed` and `outcomes` are in
/// the same order.
pub(crate) async fn record(
    conn: &mut PgConnection,
    claimed: &[Claimed],
    outcomes: &[Outcome],
    keep_sent: bool,
) -> sqlx::Result<()> {
    let mut back = Rows::default();
    let mut failed = Rows::default();
    for (row, outcome) in claimed.iter().zip(outcomes) {
        match outcome {
            Outcome::Published if !keep_sent => {}
            Outcome::Published => {
                back.push(row, true, None);
                back.delay_us.push(None);
                back.sent.push(true);
            }
            Outcome::Retry { error, delay } => {
                back.push(row, true, Some(error));
                back.delay_us
                    .push(Some(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX)));
                back.sent.push(false);
            }
            Outcome::Held => {
                back.push(row, false, None);
                back.delay_us.push(None);
                back.sent.push(false);
            }
            Outcome::Failed { error } => failed.push(row, true, Some(error)),
        }
    }
    if !back.seq.is_empty() {
        sqlx::query(PUT_BACK)
            .bind(&back.seq)
            .bind(&back.id)
            .bind(&back.topic)
            .bind(&back.key)
            .bind(&back.tag)
            .bind(&back.headers)
            .bind(&back.payload)
            .bind(&back.created_at)
            .bind(&back.available_at)
            .bind(&back.delay_us)
            .bind(&back.attempts)
            .bind(&back.last_error)
            .bind(&back.last_attempt_at)
            .bind(&back.attempted)
            .bind(&back.sent)
            .execute(&mut *conn)
            .await?;
    }
    if !failed.seq.is_empty() {
        sqlx::query(MOVE_TO_FAILURES)
            .bind(&failed.seq)
            .bind(&failed.id)
            .bind(&failed.topic)
            .bind(&failed.key)
            .bind(&failed.tag)
            .bind(&failed.headers)
            .bind(&failed.payload)
            .bind(&failed.created_at)
            .bind(&failed.attempts)
            .bind(&failed.last_error)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
