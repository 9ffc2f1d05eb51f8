//! The failure table: messages the relay gave up on, to list, replay and purge.

use chrono::{DateTime, Utc};
use sqlx::{Acquire, Executor};
use uuid::Uuid;

use crate::store::sealed::Dialect;
use crate::{Message, Result, Store};

/// What a replay did: the failures it moved back into the outbox, and those it kept because the
/// outbox already holds a message with their id.
///
/// A kept failure is a message whose id came back into the outbox some other way (enqueued again
/// with the same id, or delivered and kept for the relay's retention period). The replay neither
/// overwrites that message nor drops the failure: it reports the id and leaves the row, for you to
/// purge (the other message supersedes it) or to replay once the other message is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Failures moved back into the outbox.
    pub replayed: u64,
    /// Ids of the selected failures kept in the failure table, oldest failure first.
    pub conflicts: Vec<Uuid>,
}

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
    pub(crate) ids: Option<Vec<Uuid>>,
    pub(crate) topic: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) failed_after: Option<DateTime<Utc>>,
    pub(crate) failed_before: Option<DateTime<Utc>>,
    pub(crate) error_contains: Option<String>,
    pub(crate) limit: Option<i64>,
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
/// let report = failures.replay(&pool, &FailureFilter::all().error_contains("connection refused")).await?;
/// println!("{} messages are back in the outbox", report.replayed);
/// for id in &report.conflicts {
///     println!("{id} kept: a message with this id is already in the outbox");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Failures {
    _private: (),
}

impl Failures {
    /// The failure table (`outbox.failures` on Postgres, `outbox_failures` on SQLite).
    pub fn new() -> Self {
        Self::default()
    }

    /// The failures matching `filter`, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`](crate::Error::NotMigrated) or [`Error::Database`](crate::Error::Database).
    pub async fn list<'e, E>(
        &self,
        executor: E,
        filter: &FailureFilter,
    ) -> Result<Vec<FailedMessage>>
    where
        E: Executor<'e>,
        E::Database: Store,
    {
        <E::Database as Dialect>::list_failures(executor, filter)
            .await
            .map_err(<E::Database as Dialect>::map_error)
    }

    /// Moves the failures matching `filter` back into the outbox, due at once, with their original
    /// ids and zero attempts, and reports how many were moved. Their relative order is kept; they
    /// are published after messages already pending with the same key.
    ///
    /// A failure whose id is already in the outbox is not moved: it stays in the failure table and
    /// its id is listed in [`ReplayReport::conflicts`].
    ///
    /// Takes a pool or a connection (`&pool`, `&mut *tx`, `&mut conn`): on SQLite the move is
    /// several statements, run in a transaction of their own (a savepoint inside yours).
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`](crate::Error::NotMigrated) or [`Error::Database`](crate::Error::Database);
    /// on error nothing moves.
    pub async fn replay<'a, A>(&self, conn: A, filter: &FailureFilter) -> Result<ReplayReport>
    where
        A: Acquire<'a> + Send,
        A::Database: Store,
    {
        <A::Database as Dialect>::replay_failures(conn, filter)
            .await
            .map_err(<A::Database as Dialect>::map_error)
    }

    /// Replays one failure by message id; returns whether it was found.
    ///
    /// # Errors
    ///
    /// As [`replay`](Self::replay), and [`Error::ReplayConflict`](crate::Error::ReplayConflict)
    /// if the outbox already holds a message with this id (the failure is kept).
    pub async fn replay_one<'a, A>(&self, conn: A, id: Uuid) -> Result<bool>
    where
        A: Acquire<'a> + Send,
        A::Database: Store,
    {
        let report = self.replay(conn, &FailureFilter::all().ids([id])).await?;
        if !report.conflicts.is_empty() {
            return Err(crate::Error::ReplayConflict { id });
        }
        Ok(report.replayed > 0)
    }

    /// Deletes the failures matching `filter` for good and returns how many were deleted.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`](crate::Error::NotMigrated) or [`Error::Database`](crate::Error::Database).
    pub async fn purge<'e, E>(&self, executor: E, filter: &FailureFilter) -> Result<u64>
    where
        E: Executor<'e>,
        E::Database: Store,
    {
        <E::Database as Dialect>::purge_failures(executor, filter)
            .await
            .map_err(<E::Database as Dialect>::map_error)
    }
}
