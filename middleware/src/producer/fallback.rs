//! Failure-table fallback (safeguard P6): a send that failed its last attempt is kept in
//! `outbox.failures`, where it can be listed, replayed (through the outbox) and purged with
//! `courier_outbox::Failures`.

use std::fmt;
use std::task::{Context, Poll};

use courier_core::Message;
use courier_core::batch::{BatchFuture, PublishBatch, fail_all};
use sqlx::PgPool;
use sqlx::types::Json;
use tower::{BoxError, Layer, Service, ServiceExt};
use uuid::Uuid;

use crate::boxed::BoxResponseFuture;

/// The send failed, and the message was saved to `outbox.failures`: nothing is lost, but the caller
/// still learns that it was not sent (P8).
#[derive(Debug)]
pub struct Parked {
    id: Uuid,
    source: BoxError,
}

impl Parked {
    /// The id of the saved message.
    pub fn id(&self) -> Uuid {
        self.id
    }
}

impl fmt::Display for Parked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message {} was not sent and is kept in outbox.failures: {}",
            self.id, self.source
        )
    }
}

impl std::error::Error for Parked {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The send failed and saving the message to the failure table failed too: the message is given
/// back (tokio's `SendError<T>` style), with both errors.
#[derive(Debug)]
pub struct NotParked {
    /// The message that was neither sent nor saved.
    pub message: Message,
    /// Why the send failed.
    pub send_error: BoxError,
    /// Why saving it failed.
    pub store_error: sqlx::Error,
}

impl fmt::Display for NotParked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message {} was not sent ({}) and could not be saved to outbox.failures ({})",
            self.message.id, self.send_error, self.store_error
        )
    }
}

impl std::error::Error for NotParked {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.send_error.as_ref())
    }
}

/// Saves a message whose send failed (after the retries inside it) to `outbox.failures` and
/// answers [`Parked`]; if even that fails, answers [`NotParked`] with the message.
///
/// For applications that send directly. The relay does not need it: it moves a row that exhausted
/// its attempts to the failure table itself.
///
/// Postgres only (feature `postgres`): it takes a `PgPool` and writes the outbox's
/// `outbox.failures`; there is no SQLite version yet, unlike [`Idempotency`](crate::Idempotency)
/// and [`Inbox`](crate::Inbox).
#[derive(Debug, Clone)]
pub struct FailureFallback<S> {
    inner: S,
    pool: PgPool,
    attempts: u32,
}

impl<S> FailureFallback<S> {
    /// Saves to `pool`'s `outbox.failures`, recording `attempts` attempts (the retry layer's
    /// retries + 1; 3 by default through [`FailureFallbackLayer`]).
    pub fn new(inner: S, pool: PgPool, attempts: u32) -> Self {
        Self {
            inner,
            pool,
            attempts,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

async fn park(pool: &PgPool, message: &Message, attempts: u32, error: &str) -> sqlx::Result<()> {
    // The outbox's own sequence keeps replayed failures in order with everything else.
    sqlx::query(
        "INSERT INTO outbox.failures
             (id, seq, topic, key, tag, headers, payload, created_at, attempts, last_error)
         VALUES ($1, nextval(pg_get_serial_sequence('outbox.messages', 'seq')),
                 $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE
             SET attempts = outbox.failures.attempts + EXCLUDED.attempts,
                 last_error = EXCLUDED.last_error, failed_at = now()",
    )
    .bind(message.id)
    .bind(&message.topic)
    .bind(&message.key)
    .bind(&message.tag)
    .bind(Json(&message.headers))
    .bind(message.payload.as_ref())
    .bind(message.created_at)
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

impl<S> Service<Message> for FailureFallback<S>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let pool = self.pool.clone();
        let attempts = self.attempts;
        BoxResponseFuture::new(Box::pin(async move {
            let kept = message.clone();
            let send_error: BoxError = match service.oneshot(message).await {
                Ok(response) => return Ok(response),
                Err(error) => error.into(),
            };
            Err(keep(&pool, kept, attempts, send_error).await)
        }))
    }
}

/// Parks `message` after `send_error`: the error to answer, [`Parked`] or [`NotParked`].
async fn keep(pool: &PgPool, kept: Message, attempts: u32, send_error: BoxError) -> BoxError {
    match park(pool, &kept, attempts, &send_error.to_string()).await {
        Ok(()) => {
            tracing::warn!(message.id = %kept.id, topic = %kept.topic, error = %send_error,
                "send failed; the message is kept in outbox.failures");
            metrics::counter!("courier_send_parked_total", "topic" => kept.topic.clone())
                .increment(1);
            Parked {
                id: kept.id,
                source: send_error,
            }
            .into()
        }
        Err(store_error) => {
            tracing::error!(message.id = %kept.id, error = %send_error, %store_error,
                "send failed and the message could not be saved to outbox.failures");
            NotParked {
                message: kept,
                send_error,
                store_error,
            }
            .into()
        }
    }
}

/// Every message of a batch that failed, or was not sent behind a failure, is parked alone;
/// the others keep their answer. Parked in batch order, so replay keeps each key's order.
impl<S> PublishBatch for FailureFallback<S>
where
    S: PublishBatch,
{
    type Response = S::Response;

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<S::Response> {
        let kept = messages.clone();
        let call = self.inner.publish_batch(messages);
        let pool = self.pool.clone();
        let attempts = self.attempts;
        Box::pin(async move {
            let count = kept.len();
            let mut answered = call.await;
            if answered.len() != count {
                // Nothing may slip through a miscounted answer: every message counts as failed.
                let error = format!(
                    "the publisher answered {} outcomes for {count} messages",
                    answered.len()
                );
                answered = fail_all(error.into(), count);
            }
            let mut outcomes = Vec::with_capacity(count);
            for (message, outcome) in kept.into_iter().zip(answered) {
                outcomes.push(match outcome {
                    Ok(response) => Ok(response),
                    Err(error) => Err(keep(&pool, message, attempts, error).await),
                });
            }
            outcomes
        })
    }
}

/// Applies [`FailureFallback`].
#[derive(Debug, Clone)]
pub struct FailureFallbackLayer {
    pool: PgPool,
    attempts: u32,
}

impl FailureFallbackLayer {
    /// Saves to `pool`'s `outbox.failures`, recording 3 attempts (the default send retries + 1).
    pub fn new(pool: PgPool) -> Self {
        Self { pool, attempts: 3 }
    }

    /// The attempts to record: the retries of the retry layer inside + 1.
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }
}

impl<S> Layer<S> for FailureFallbackLayer {
    type Service = FailureFallback<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FailureFallback::new(inner, self.pool.clone(), self.attempts)
    }
}
