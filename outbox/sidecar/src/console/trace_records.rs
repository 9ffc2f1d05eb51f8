//! What the trace reads from the application's database about one message, the same on every
//! store: its outbox row, its failure record, and the consumer's records (idempotency records,
//! the durable inbox, its dead letters). Postgres and MySQL differ only in the SQL: the schema
//! (`outbox.` / `courier_inbox.` against the `outbox_` / `courier_inbox_` prefixes) and column
//! types (MySQL keeps groups and keys as bytes, headers as JSON text).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, PgPool, QueryBuilder};
use uuid::Uuid;

/// The message's outbox row.
pub(crate) struct OutboxRecord {
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) created: DateTime<Utc>,
    pub(crate) available: DateTime<Utc>,
    pub(crate) attempts: i32,
    pub(crate) last_error: Option<String>,
    pub(crate) last_attempt: Option<DateTime<Utc>>,
    pub(crate) sent: Option<DateTime<Utc>>,
    /// Postgres's key partition; MySQL has none (relays lease rows instead).
    pub(crate) partition: Option<i16>,
}

/// The message's failure record.
pub(crate) struct FailureRecord {
    pub(crate) attempts: i32,
    pub(crate) last_error: String,
    pub(crate) failed: DateTime<Utc>,
    pub(crate) created: DateTime<Utc>,
}

/// A row of the durable inbox: (group, received, attempts, done, last error).
pub(crate) type InboxRecord = (
    String,
    DateTime<Utc>,
    i32,
    Option<DateTime<Utc>>,
    Option<String>,
);

/// The consumer side; `None` when the consumer tables are not in this database.
pub(crate) struct ConsumerRecords {
    /// (group, idempotency key, processed at).
    pub(crate) processed: Vec<(String, String, DateTime<Utc>)>,
    pub(crate) inbox: Vec<InboxRecord>,
    /// (group, failed at, last error).
    pub(crate) dead: Vec<(String, DateTime<Utc>, String)>,
}

/// The headers as stored (JSON object text), or none if they do not parse.
fn parse_headers(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Bytes as text (MySQL's binary group and key columns).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// An outbox row as both stores select it: topic, key, headers (JSON text), created,
/// available, attempts, last error, last attempt, sent, partition.
type OutboxRow = (
    String,
    Option<String>,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    i32,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i16>,
);

/// A failure record as both stores select it: attempts, last error, failed, created.
type FailureRow = (i32, String, DateTime<Utc>, DateTime<Utc>);

fn records(
    row: Option<OutboxRow>,
    failure: Option<FailureRow>,
) -> (Option<OutboxRecord>, Option<FailureRecord>) {
    let row = row.map(
        |(topic, key, headers, created, available, attempts, error, last, sent, partition)| {
            OutboxRecord {
                topic,
                key,
                headers: parse_headers(&headers),
                created,
                available,
                attempts,
                last_error: error,
                last_attempt: last,
                sent,
                partition,
            }
        },
    );
    let failure = failure.map(|(attempts, last_error, failed, created)| FailureRecord {
        attempts,
        last_error,
        failed,
        created,
    });
    (row, failure)
}

/// The outbox row and failure record of `id` on Postgres.
pub(crate) async fn outbox_postgres(
    pool: &PgPool,
    id: Uuid,
) -> sqlx::Result<(Option<OutboxRecord>, Option<FailureRecord>)> {
    let row = sqlx::query_as(
        "SELECT topic, key, headers::text, created_at, available_at, attempts, last_error,
                last_attempt_at, sent_at, partition
         FROM outbox.messages WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let failure = sqlx::query_as(
        "SELECT attempts, last_error, failed_at, created_at FROM outbox.failures WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(records(row, failure))
}

/// The outbox row and failure record of `id` on MySQL, which has no key partitions.
pub(crate) async fn outbox_mysql(
    pool: &MySqlPool,
    id: Uuid,
) -> sqlx::Result<(Option<OutboxRecord>, Option<FailureRecord>)> {
    // Topics and keys are `_bin` columns, which MySQL reports as binary: cast to text.
    let row = sqlx::query_as(
        "SELECT CAST(topic AS CHAR), CAST(`key` AS CHAR), headers, created_at, available_at,
                attempts, last_error, last_attempt_at, sent_at, NULL
         FROM outbox_messages WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let failure = sqlx::query_as(
        "SELECT attempts, last_error, failed_at, created_at FROM outbox_failures WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(records(row, failure))
}

/// The consumer's records of `id` on Postgres: idempotency records by `keys`, the inbox and its
/// dead letters by id.
pub(crate) async fn consumer_postgres(
    pool: &PgPool,
    id: Uuid,
    keys: &[String],
) -> sqlx::Result<Option<ConsumerRecords>> {
    let present: bool =
        sqlx::query_scalar("SELECT to_regclass('courier_inbox.processed') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !present {
        return Ok(None);
    }
    let processed = sqlx::query_as(
        "SELECT consumer_group, key, processed_at FROM courier_inbox.processed WHERE key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    let inbox = sqlx::query_as(
        "SELECT consumer_group, received_at, attempts, done_at, last_error
         FROM courier_inbox.messages WHERE id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let dead = sqlx::query_as(
        "SELECT consumer_group, failed_at, last_error FROM courier_inbox.dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(ConsumerRecords {
        processed,
        inbox,
        dead,
    }))
}

/// The consumer's records of `id` on MySQL, as [`consumer_postgres`].
pub(crate) async fn consumer_mysql(
    pool: &MySqlPool,
    id: Uuid,
    keys: &[String],
) -> sqlx::Result<Option<ConsumerRecords>> {
    let present: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables
         WHERE table_schema = DATABASE() AND table_name = 'courier_inbox_processed'",
    )
    .fetch_one(pool)
    .await?;
    if present == 0 {
        return Ok(None);
    }
    let mut select = QueryBuilder::<sqlx::MySql>::new(
        "SELECT consumer_group, `key`, processed_at FROM courier_inbox_processed WHERE `key` IN (",
    );
    let mut each = select.separated(", ");
    for key in keys {
        each.push_bind(key.as_bytes());
    }
    select.push(")");
    let processed: Vec<(Vec<u8>, Vec<u8>, DateTime<Utc>)> =
        select.build_query_as().fetch_all(pool).await?;
    type MySqlInboxRow = (
        Vec<u8>,
        DateTime<Utc>,
        i32,
        Option<DateTime<Utc>>,
        Option<String>,
    );
    let inbox: Vec<MySqlInboxRow> = sqlx::query_as(
        "SELECT consumer_group, received_at, attempts, done_at, CAST(last_error AS CHAR)
         FROM courier_inbox_messages WHERE id = ?",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let dead: Vec<(Vec<u8>, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT consumer_group, failed_at, CAST(last_error AS CHAR)
         FROM courier_inbox_dead_letters WHERE id = ?",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(ConsumerRecords {
        processed: processed
            .into_iter()
            .map(|(group, key, at)| (text(group), text(key), at))
            .collect(),
        inbox: inbox
            .into_iter()
            .map(|(group, received, attempts, done, error)| {
                (text(group), received, attempts, done, error)
            })
            .collect(),
        dead: dead
            .into_iter()
            .map(|(group, at, error)| (text(group), at, error))
            .collect(),
    }))
}

/// The idempotency keys a message may be recorded under: its id, and `h:<value>` for each of
/// its header values (a header-keyed layer).
pub(crate) fn idempotency_keys(id: Uuid, header_values: &BTreeSet<String>) -> Vec<String> {
    let mut keys = vec![id.to_string()];
    keys.extend(header_values.iter().map(|v| format!("h:{v}")));
    keys
}
