//! The application's database as the crash test sees it: where orders are written (with their
//! outbox message, in one transaction) and where the consumer's effects end up. Postgres or
//! MariaDB / MySQL; the outbox, the relay and the idempotency records live in the same database.

use std::collections::HashMap;
use std::time::Duration;

use courier::outbox::{Message, Outbox};
use sqlx::{ConnectOptions, MySqlPool, PgPool};
use uuid::Uuid;

use crate::TOPIC;

/// The database of one crash run.
#[derive(Clone)]
pub(crate) enum Ledger {
    Postgres(PgPool),
    MySql { pool: MySqlPool, url: String },
}

impl Ledger {
    /// A URL of the database for the processes the test starts.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Postgres(pool) => pool.connect_options().to_url_lossy().to_string(),
            Self::MySql { url, .. } => url.clone(),
        }
    }

    /// Creates the consumer's table of effects.
    pub(crate) async fn create_effects(&self) {
        match self {
            Self::Postgres(pool) => sqlx::query(
                "CREATE TABLE crash_effects (message_id uuid NOT NULL, order_id uuid NOT NULL)",
            )
            .execute(pool)
            .await
            .map(drop),
            Self::MySql { pool, .. } => sqlx::query(
                "CREATE TABLE crash_effects (message_id BINARY(16) NOT NULL, order_id BINARY(16) NOT NULL)",
            )
            .execute(pool)
            .await
            .map(drop),
        }
        .unwrap();
    }

    /// Writes one order and its message; commits it, or rolls it back when `commit` is false.
    pub(crate) async fn write_order(&self, commit: bool) -> Uuid {
        let order = Uuid::now_v7();
        let message = Message::json(TOPIC, &order)
            .unwrap()
            .with_key(order.to_string());
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await.unwrap();
                Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
                if commit {
                    tx.commit().await
                } else {
                    tx.rollback().await
                }
                .unwrap();
            }
            Self::MySql { pool, .. } => {
                let mut tx = pool.begin().await.unwrap();
                Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
                if commit {
                    tx.commit().await
                } else {
                    tx.rollback().await
                }
                .unwrap();
            }
        }
        message.id
    }

    /// (distinct messages with an effect, messages still pending in the outbox).
    async fn progress(&self) -> (i64, i64) {
        match self {
            Self::Postgres(pool) => sqlx::query_as(
                "SELECT (SELECT count(DISTINCT message_id) FROM crash_effects),
                        (SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL)",
            )
            .fetch_one(pool)
            .await
            .unwrap(),
            Self::MySql { pool, .. } => sqlx::query_as(
                "SELECT (SELECT count(DISTINCT message_id) FROM crash_effects),
                        (SELECT count(*) FROM outbox_messages WHERE sent_at IS NULL)",
            )
            .fetch_one(pool)
            .await
            .unwrap(),
        }
    }

    /// Waits (up to two minutes, never asserted as a timing) until `committed` messages have an
    /// effect and the outbox has nothing pending.
    pub(crate) async fn wait_until_drained(&self, committed: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (effects, pending) = self.progress().await;
            if effects as usize >= committed && pending == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up: {effects} of {committed} committed messages have an effect, {pending} still in the outbox"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The effects per message id, and the number of rows in the failure table.
    pub(crate) async fn effects_and_failures(&self) -> (HashMap<Uuid, usize>, i64) {
        let (ids, failures): (Vec<Uuid>, i64) = match self {
            Self::Postgres(pool) => (
                sqlx::query_scalar("SELECT message_id FROM crash_effects")
                    .fetch_all(pool)
                    .await
                    .unwrap(),
                sqlx::query_scalar("SELECT count(*) FROM outbox.failures")
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            ),
            Self::MySql { pool, .. } => (
                sqlx::query_scalar("SELECT message_id FROM crash_effects")
                    .fetch_all(pool)
                    .await
                    .unwrap(),
                sqlx::query_scalar("SELECT count(*) FROM outbox_failures")
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            ),
        };
        let mut effects: HashMap<Uuid, usize> = HashMap::new();
        for id in ids {
            *effects.entry(id).or_default() += 1;
        }
        (effects, failures)
    }
}
