//! What the relay engine asks of a store: one session of claiming, publishing and recording.
//!
//! The engine (wake-ups, busy polling, rebalancing, shutdown) is the same for every database; how
//! rows are claimed differs. Postgres holds the claimed rows locked in one transaction while they
//! are published; SQLite, with its single writer, leases them in one short transaction and records
//! their outcome in another.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::Message;

/// A claimed row: the envelope plus what the relay must restore if it puts the row back.
#[derive(Debug)]
pub struct Claimed {
    pub(crate) seq: i64,
    pub(crate) message: Message,
    /// Only the Postgres store reads these back: it deletes claimed rows and re-inserts the ones
    /// it did not publish. The SQLite store updates rows in place and leaves them `None`.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) last_error: Option<String>,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) last_attempt_at: Option<DateTime<Utc>>,
}

/// What happened to one claimed row.
#[derive(Debug)]
pub enum Outcome {
    /// The broker has it: gone (or kept as sent, with a retention period).
    Published,
    /// Failed; try again after the delay.
    Retry { error: String, delay: Duration },
    /// Failed for good: move to the failure table.
    Failed { error: String },
    /// Not attempted because an earlier message with the same key failed; put back untouched.
    Held,
}

/// How one claim-publish-record round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// Nothing was due.
    Empty,
    /// A batch was published and its outcomes recorded.
    Done,
    /// Shutdown came and the grace period ran out: the batch went back to the outbox untouched.
    Abandoned,
}

/// Pending messages and the age of the oldest due one, for the backlog gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    pub(crate) pending: i64,
    pub(crate) oldest_due_age: Duration,
}

/// Publishes a claimed batch and returns one outcome per row, in order; `None` if the batch must be
/// given back untouched (shutdown).
pub trait PublishFn: FnOnce(Arc<[Claimed]>) -> Self::Fut + Send {
    type Fut: Future<Output = Option<Vec<Outcome>>> + Send;
}

impl<F, Fut> PublishFn for F
where
    F: FnOnce(Arc<[Claimed]>) -> Fut + Send,
    Fut: Future<Output = Option<Vec<Outcome>>> + Send,
{
    type Fut = Fut;
}

/// One relay's connection to its store, from start (or reconnect) to shutdown (or loss).
pub trait Session: Send {
    /// Claims up to `limit` due rows, hands them to `publish`, and records the outcomes. A store
    /// may let a batch published whole finish committing behind the next call's publish (Postgres
    /// does); it commits the next batch only after it, and any other call waits for it first.
    fn batch<F: PublishFn>(
        &mut self,
        limit: usize,
        keep_sent: bool,
        publish: F,
    ) -> impl Future<Output = sqlx::Result<BatchEnd>> + Send;

    /// Recounts the relays and takes this one's share of the work, where the store shares it out.
    fn rebalance(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Reads the backlog and purges sent rows older than `retention`.
    fn maintain(
        &mut self,
        retention: Option<Duration>,
    ) -> impl Future<Output = sqlx::Result<Backlog>> + Send;

    /// Tells writers whether this relay waits for a wake-up (idle) or polls on its own (busy).
    fn set_idle(&mut self, idle: bool) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// How long until the earliest pending message that is not yet due becomes due.
    fn next_due(&mut self) -> impl Future<Output = sqlx::Result<Option<Duration>>> + Send;

    /// Ends the session cleanly after a shutdown.
    fn close(self) -> impl Future<Output = ()> + Send;
}
