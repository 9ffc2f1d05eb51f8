//! The failure table: messages the relay gave up on, to list, replay and purge.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgExecutor, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::{Error, Message, Result};

/// A message in `outbox.failures`: the envelope, its last error and when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedMessage {
    /// The envelope as it was enqueued; `attempts` is the number of publish attempts made.
    pub message: Message,
    /// The error of the last attempt, with its source chain.
    pub last_error: String,
    /// When the relay gave up.
    pub failed_at: DateTime<Utc>,
}

/// Which failures to list, replay or purge. All conditions must hold; no condition selects all.
///
/// ```
/// use courier_outbox::FailureFilter;
///
/// let filter = FailureFilter::all()
///     .topic("payments")
///     .error_contains("timed out")
///     .limit(100);
/// # let _ = filter;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct FailureFilter {
    ids: Option<Vec<Uuid>>,
    topic: Option<String>,
    key: Option<String>,
    failed_after: Option<DateTime<Utc>>,
    failed_before: Option<DateTime<Utc>>,
    error_contains: Option<String>,
    limit: Option<i64>,
}

impl FailureFilter {
    /// Every failure.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only these message ids.
    pub fn ids(mut self, ids: impl IntoIterator<Item = Uuid>) -> Self {
        self.ids = Some(ids.into_iter().collect());
        self
    }

    /// Only this topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Only this key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Only failures at or after `at`.
    pub fn failed_after(mut self, at: DateTime<Utc>) -> Self {
        self.failed_after = Some(at);
        self
    }

    /// Only failures before `at`.
    pub fn failed_before(mut self, at: DateTime<Utc>) -> Self {
        self.failed_before = Some(at);
        self
    }

    /// Only failures whose last error contains `text` (case-insensitive).
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// At most `limit` failures, oldest first.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(i64::from(limit));
        self
    }

    /// Appends `SELECT id FROM outbox.failures WHERE … ORDER BY … LIMIT …`.
    fn push_selection(&self, query: &mut QueryBuilder<'_, Postgres>) {
        query.push("SELECT id FROM outbox.failures WHERE true");
        if let Some(ids) = &self.ids {
            query
                .push(" AND id = ANY(")
                .push_bind(ids.clone())
                .push(")");
        }
        if let Some(topic) = &self.topic {
            query.push(" AND topic = ").push_bind(topic.clone());
        }
        if let Some(key) = &self.key {
            query.push(" AND key = ").push_bind(key.clone());
        }
        if let Some(at) = self.failed_after {
            query.push(" AND failed_at >= ").push_bind(at);
        }
        if let Some(at) = self.failed_before {
            query.push(" AND failed_at < ").push_bind(at);
        }
        if let Some(text) = &self.error_contains {
            query
                .push(" AND strpos(lower(last_error), lower(")
                .push_bind(text.clone())
                .push(")) > 0");
        }
        query.push(" ORDER BY failed_at, seq");
        if let Some(limit) = self.limit {
            query.push(" LIMIT ").push_bind(limit);
        }
    }
}

/// Lists, replays and purges the failure table.
///
/// Every method takes an executor, so it can run on a pool or inside your own transaction.
///
/// # Examples
///
/// ```no_run
/// use courier_outbox::{FailureFilter, Failures};
///
/// # async fn example(pool: sqlx::PgPool) -> Result<(), courier_outbox::Error> {
/// let failures = Failures::new();
/// for failed in failures.list(&pool, &FailureFilter::all().topic("payments")).await? {
///     println!("{} failed: {}", failed.message.id, failed.last_error);
/// }
/// let replayed = failures.replay(&pool, &FailureFilter::all().error_contains("connection refused")).await?;
/// println!("{replayed} messages are back in the outbox");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Failures {
    _private: (),
}

impl Failures {
    /// The failure table of the `outbox` schema.
    pub fn new() -> Self {
        Self::default()
    }

    /// The failures matching `filter`, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn list<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: &FailureFilter,
    ) -> Result<Vec<FailedMessage>> {
        let mut query = QueryBuilder::new(
            "SELECT id, topic, key, tag, headers, payload, created_at, attempts, last_error, failed_at
             FROM outbox.failures WHERE id IN (",
        );
        filter.push_selection(&mut query);
        query.push(") ORDER BY failed_at, seq");
        let rows = query
            .build()
            .fetch_all(executor)
            .await
            .map_err(Error::from_db)?;
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
            .collect::<sqlx::Result<_>>()
            .map_err(Error::Database)
    }

    /// Moves the failures matching `filter` back into the outbox, due at once, with their original
    /// ids and zero attempts, and returns how many were moved. Their relative order is kept; they
    /// are published after messages already pending with the same key.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`]; on error nothing moves.
    pub async fn replay<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: &FailureFilter,
    ) -> Result<u64> {
        let mut query =
            QueryBuilder::new("WITH moved AS (DELETE FROM outbox.failures WHERE id IN (");
        filter.push_selection(&mut query);
        query.push(
            ") RETURNING *)
             INSERT INTO outbox.messages (id, topic, key, tag, headers, payload, created_at)
             SELECT id, topic, key, tag, headers, payload, created_at FROM moved ORDER BY seq
             ON CONFLICT (id) DO NOTHING",
        );
        let done = query
            .build()
            .execute(executor)
            .await
            .map_err(Error::from_db)?;
        Ok(done.rows_affected())
    }

    /// Replays one failure by message id; returns whether it was found.
    ///
    /// # Errors
    ///
    /// As [`replay`](Self::replay).
    pub async fn replay_one<'e, E: PgExecutor<'e>>(&self, executor: E, id: Uuid) -> Result<bool> {
        Ok(self
            .replay(executor, &FailureFilter::all().ids([id]))
            .await?
            > 0)
    }

    /// Deletes the failures matching `filter` for good and returns how many were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`] or [`Error::Database`].
    pub async fn purge<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: &FailureFilter,
    ) -> Result<u64> {
        let mut query = QueryBuilder::new("DELETE FROM outbox.failures WHERE id IN (");
        filter.push_selection(&mut query);
        query.push(")");
        let done = query
            .build()
            .execute(executor)
            .await
            .map_err(Error::from_db)?;
        Ok(done.rows_affected())
    }
}
