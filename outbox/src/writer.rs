//! The writer: puts messages into the outbox table inside the caller's transaction.

use std::borrow::Cow;

use courier_core::trace_context::{self, TRACEPARENT};
use sqlx::Executor;
use tracing::Instrument;
use uuid::Uuid;

use crate::store::sealed::Dialect;
use crate::{Limits, Message, Result, Store};

/// Writes messages into the outbox table, inside whatever transaction the caller is running.
///
/// The writer never owns a connection: pass `&mut *tx` to make the message part of your business
/// transaction, so it is published if and only if the transaction commits. It works on any
/// [`Store`]: the database is the executor's.
///
/// On Postgres the insert fires a `NOTIFY` that is delivered on commit, waking an idle relay at
/// once. On SQLite the writer wakes the relays of its own process, which then poll briefly until
/// the transaction commits. On SQLite, begin business transactions with
/// `pool.begin_with("BEGIN IMMEDIATE")`: a transaction that reads before it writes may otherwise
/// fail with "database is locked" when another writer got in between.
///
/// Each enqueue runs in an `outbox.enqueue` span. With an OpenTelemetry layer in the subscriber
/// the row is stored with that span's W3C `traceparent` (a child of the caller's span), which the
/// relay's `outbox.publish` span and the consumer's span continue: one trace from the business
/// transaction to the handler ([`courier_core::trace_context`]).
///
/// # Examples
///
/// ```no_run
/// use courier_outbox::{Message, Outbox};
///
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new();
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)")
///     .bind(42_i64)
///     .bind(1999_i64)
///     .execute(&mut *tx)
///     .await?;
/// outbox
///     .enqueue(&mut *tx, &Message::json("orders.created", &serde_json::json!({"id": 42}))?.with_key("order-42"))
///     .await?;
/// tx.commit().await?; // the message exists from here on, never before
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    limits: Limits,
}

impl Outbox {
    /// A writer with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer that validates messages against `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        Self { limits }
    }

    /// The limits messages are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Inserts one message through `executor` and returns its id.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](crate::Error::Invalid) if the message breaks the limits (nothing is written),
    /// [`Error::NotMigrated`](crate::Error::NotMigrated) if the outbox tables are missing, [`Error::Database`](crate::Error::Database) otherwise.
    /// A failed insert inside a transaction aborts that transaction, as any failed statement does.
    pub async fn enqueue<'e, E>(&self, executor: E, message: &Message) -> Result<Uuid>
    where
        E: Executor<'e>,
        E::Database: Store,
    {
        self.limits.check(message)?;
        let span = tracing::info_span!(
            "outbox.enqueue",
            message.id = %message.id,
            message.topic = %message.topic,
        );
        // A traceparent the application set is this span's parent; the row then carries the
        // span's own context, which the relay's publish span continues.
        trace_context::adopt(&span, &message.headers);
        let message = traced(&span, message);
        <E::Database as Dialect>::insert_one(executor, &message)
            .instrument(span)
            .await
            .map_err(<E::Database as Dialect>::map_error)?;
        <E::Database as Dialect>::enqueued();
        Ok(message.id)
    }

    /// Inserts all `messages` in one statement (one round trip) and returns how many were written.
    ///
    /// Messages keep their order: messages sharing a key are published in slice order.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue); if any message is invalid, none is written.
    pub async fn enqueue_batch<'e, E>(&self, executor: E, messages: &[Message]) -> Result<u64>
    where
        E: Executor<'e>,
        E::Database: Store,
    {
        if messages.is_empty() {
            return Ok(0);
        }
        for message in messages {
            self.limits.check(message)?;
        }
        let span = tracing::info_span!("outbox.enqueue", size = messages.len());
        // One span for the statement: messages without a traceparent get its context, those
        // with one keep theirs.
        let messages: Cow<'_, [Message]> = if trace_context::is_traced(&span) {
            messages
                .iter()
                .map(|message| match message.headers.contains_key(TRACEPARENT) {
                    true => message.clone(),
                    false => traced(&span, message).into_owned(),
                })
                .collect::<Vec<_>>()
                .into()
        } else {
            Cow::Borrowed(messages)
        };
        let written = <E::Database as Dialect>::insert_many(executor, &messages)
            .instrument(span)
            .await
            .map_err(<E::Database as Dialect>::map_error)?;
        <E::Database as Dialect>::enqueued();
        Ok(written)
    }
}

/// `message` with `span`'s trace context in its headers; as it is (not copied) when `span` has no
/// OpenTelemetry context.
fn traced<'m>(span: &tracing::Span, message: &'m Message) -> Cow<'m, Message> {
    if !trace_context::is_traced(span) {
        return Cow::Borrowed(message);
    }
    let mut message = message.clone();
    trace_context::stamp(span, &mut message.headers);
    Cow::Owned(message)
}

/// The message's delay in microseconds, saturating.
pub(crate) fn delay_micros(message: &Message) -> Option<i64> {
    message
        .delay
        .map(|delay| i64::try_from(delay.as_micros()).unwrap_or(i64::MAX))
}
