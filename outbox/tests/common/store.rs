//! The raw SQL the tests need, once per store: reading the outbox table, filling the failure
//! table behind the writer's back, opening a write transaction.

use chrono::{DateTime, Utc};
use courier_outbox::Store;
use sqlx::{MySql, Pool, Postgres, Row as _, Sqlite, Transaction};
use uuid::Uuid;

/// A row of the outbox table, as the tests look at it.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: Uuid,
    pub topic: String,
    pub key: Option<String>,
    pub tag: Option<String>,
    pub headers: serde_json::Value,
    pub payload: Vec<u8>,
    pub attempts: i64,
    pub available_at: DateTime<Utc>,
    /// Marked sent (the relay runs with a retention period).
    pub sent: bool,
    /// Reserved to a relay (SQLite and MySQL leases; always false on Postgres, whose claims are
    /// row locks).
    pub leased: bool,
    /// When the lease runs out (SQLite and MySQL; always `None` on Postgres).
    pub leased_until: Option<DateTime<Utc>>,
}

/// A database the outbox tests run against.
#[allow(async_fn_in_trait)]
pub trait TestStore: Store {
    /// A write transaction; on SQLite it takes the write lock at `BEGIN`.
    async fn begin(pool: &Pool<Self>) -> Transaction<'static, Self>;

    /// Every row of the outbox table, in sequence order.
    async fn rows(pool: &Pool<Self>) -> Vec<Row>;

    /// Rows in the failure table.
    async fn failure_count(pool: &Pool<Self>) -> i64;

    /// Writes `n` failures of each of the topics `orders` ("Connection refused …") and `payments`
    /// ("send timed out …") straight into the failure table; failure `g` failed `g` hours ago and
    /// has key `key-{g % 3}`.
    async fn seed_failures(pool: &Pool<Self>, n: i64);

    /// Rows in the outbox table, sent or not.
    async fn pending(pool: &Pool<Self>) -> usize {
        Self::rows(pool).await.len()
    }

    /// The row of message `id`.
    async fn row(pool: &Pool<Self>, id: Uuid) -> Row {
        Self::rows(pool)
            .await
            .into_iter()
            .find(|row| row.id == id)
            .unwrap_or_else(|| panic!("no outbox row for {id}"))
    }
}

impl TestStore for Postgres {
    async fn begin(pool: &Pool<Self>) -> Transaction<'static, Self> {
        pool.begin().await.unwrap()
    }

    async fn rows(pool: &Pool<Self>) -> Vec<Row> {
        let rows = sqlx::query(
            "SELECT id, topic, key, tag, headers, payload, attempts, available_at,
                    sent_at IS NOT NULL AS sent
             FROM outbox.messages ORDER BY seq",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        rows.iter()
            .map(|row| Row {
                id: row.get("id"),
                topic: row.get("topic"),
                key: row.get("key"),
                tag: row.get("tag"),
                headers: row.get("headers"),
                payload: row.get("payload"),
                attempts: i64::from(row.get::<i32, _>("attempts")),
                available_at: row.get("available_at"),
                sent: row.get("sent"),
                leased: false,
                leased_until: None,
            })
            .collect()
    }

    async fn failure_count(pool: &Pool<Self>) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox.failures")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn seed_failures(pool: &Pool<Self>, n: i64) {
        sqlx::query(
            "INSERT INTO outbox.failures
                 (id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error,
                  failed_at)
             SELECT gen_random_uuid(), g, t.topic, 'key-' || (g % 3), NULL, '{}', '\\x00', now(),
                    16, t.error || ' #' || g, now() - g * interval '1 hour'
             FROM generate_series(1, $1) AS g,
                  (VALUES ('orders', 'Connection refused'), ('payments', 'send timed out'))
                      AS t(topic, error)",
        )
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
    }
}

impl TestStore for Sqlite {
    async fn begin(pool: &Pool<Self>) -> Transaction<'static, Self> {
        pool.begin_with("BEGIN IMMEDIATE").await.unwrap()
    }

    async fn rows(pool: &Pool<Self>) -> Vec<Row> {
        let rows = sqlx::query(
            "SELECT id, topic, key, tag, headers, payload, attempts, available_at,
                    sent_at IS NOT NULL AS sent, lease_owner IS NOT NULL AS leased, leased_until
             FROM outbox_messages ORDER BY seq",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        rows.iter()
            .map(|row| Row {
                id: row.get("id"),
                topic: row.get("topic"),
                key: row.get("key"),
                tag: row.get("tag"),
                headers: serde_json::from_str(row.get("headers")).unwrap(),
                payload: row.get("payload"),
                attempts: row.get("attempts"),
                available_at: DateTime::from_timestamp_micros(row.get("available_at")).unwrap(),
                sent: row.get("sent"),
                leased: row.get("leased"),
                leased_until: row
                    .get::<Option<i64>, _>("leased_until")
                    .map(|at| DateTime::from_timestamp_micros(at).unwrap()),
            })
            .collect()
    }

    async fn failure_count(pool: &Pool<Self>) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox_failures")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn seed_failures(pool: &Pool<Self>, n: i64) {
        sqlx::query(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
             INSERT INTO outbox_failures
                 (id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error,
                  failed_at)
             SELECT randomblob(16), g.n, t.topic, 'key-' || (g.n % 3), NULL, '{}', x'00', ?2,
                    16, t.error || ' #' || g.n, ?2 - g.n * 3600000000
             FROM g, (SELECT 'orders' AS topic, 'Connection refused' AS error
                      UNION ALL SELECT 'payments', 'send timed out') AS t",
        )
        .bind(n)
        .bind(Utc::now().timestamp_micros())
        .execute(pool)
        .await
        .unwrap();
    }
}

impl TestStore for MySql {
    async fn begin(pool: &Pool<Self>) -> Transaction<'static, Self> {
        pool.begin().await.unwrap()
    }

    async fn rows(pool: &Pool<Self>) -> Vec<Row> {
        let rows = sqlx::query(
            "SELECT id, topic, `key`, tag, headers, payload, attempts, available_at, sent_at,
                    lease_owner, leased_until
             FROM outbox_messages ORDER BY seq",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        rows.iter()
            .map(|row| Row {
                id: row.get("id"),
                // `_bin` collations read as bytes (see the store's row.rs).
                topic: String::from_utf8(row.get("topic")).unwrap(),
                key: row
                    .get::<Option<Vec<u8>>, _>("key")
                    .map(|key| String::from_utf8(key).unwrap()),
                tag: row
                    .get::<Option<Vec<u8>>, _>("tag")
                    .map(|tag| String::from_utf8(tag).unwrap()),
                headers: serde_json::from_str(row.get("headers")).unwrap(),
                payload: row.get("payload"),
                attempts: i64::from(row.get::<i32, _>("attempts")),
                available_at: row.get("available_at"),
                sent: row.get::<Option<DateTime<Utc>>, _>("sent_at").is_some(),
                leased: row.get::<Option<String>, _>("lease_owner").is_some(),
                leased_until: row.get("leased_until"),
            })
            .collect()
    }

    async fn failure_count(pool: &Pool<Self>) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox_failures")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    async fn seed_failures(pool: &Pool<Self>, n: i64) {
        sqlx::query(
            "INSERT INTO outbox_failures
                 (id, seq, topic, `key`, tag, headers, payload, created_at, attempts, last_error,
                  failed_at)
             WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?)
             SELECT UNHEX(REPLACE(UUID(), '-', '')), g.n, t.topic, CONCAT('key-', g.n % 3), NULL,
                    '{}', x'00', UTC_TIMESTAMP(6), 16, CONCAT(t.error, ' #', g.n),
                    UTC_TIMESTAMP(6) - INTERVAL g.n HOUR
             FROM g, (SELECT 'orders' AS topic, 'Connection refused' AS error
                      UNION ALL SELECT 'payments', 'send timed out') AS t",
        )
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
    }
}
