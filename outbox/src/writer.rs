//! The writer: puts messages into the outbox table inside the caller's transaction.

use sqlx::PgExecutor;
use sqlx::types::Json;
use uuid::Uuid;

use crate::{Error, Limits, Message, Result};

const INSERT_ONE: &str = "\
INSERT INTO outbox.messages (id, topic, key, tag, headers, payload, created_at, available_at)
VALUES ($1, $2, $3, $4, $5, $6, $7,
        COALESCE($8, now() + COALESCE($9, 0) * interval '1 microsecond'))";

const INSERT_MANY: &str = "\
INSERT INTO outbox.messages (id, topic, key, tag, headers, payload, created_at, available_at)
SELECT id, topic, key, tag, headers, payload, created_at,
       COALESCE(available_at, now() + COALESCE(delay_us, 0) * interval '1 microsecond')
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[],
            $7::timestamptz[], $8::timestamptz[], $9::int8[])
     WITH ORDINALITY AS m(id, topic, key, tag, headers, payload, created_at, available_at, delay_us, ord)
ORDER BY ord";

/// Writes messages into the outbox table, inside whatever transaction the caller is running.
///
/// The writer never owns a connection: pass `&mut *tx` to make the message part of your business
/// transaction, so it is published if and only if the transaction commits. The insert fires a
/// `NOTIFY` that Postgres delivers on commit, waking an idle relay at once.
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
    /// [`Error::Invalid`] if the message breaks the limits (nothing is written),
    /// [`Error::NotMigrated`] if the outbox tables are missing, [`Error::Database`] otherwise.
    /// A failed insert inside a transaction aborts that transaction, as any failed statement does.
    pub async fn enqueue<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        message: &Message,
    ) -> Result<Uuid> {
        self.limits.check(message)?;
        sqlx::query(INSERT_ONE)
            .bind(message.id)
            .bind(&message.topic)
            .bind(message.key.as_deref())
            .bind(message.tag.as_deref())
            .bind(Json(&message.headers))
            .bind(message.payload.as_ref())
            .bind(message.created_at)
            .bind(message.available_at)
            .bind(delay_micros(message))
            .execute(executor)
            .await
            .map_err(Error::from_db)?;
        Ok(message.id)
    }

    /// Inserts all `messages` in one statement (one round trip) and returns how many were written.
    ///
    /// Messages keep their order: messages sharing a key are published in slice order.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue); if any message is invalid, none is written.
    pub async fn enqueue_batch<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        messages: &[Message],
    ) -> Result<u64> {
        if messages.is_empty() {
            return Ok(0);
        }
        for message in messages {
            self.limits.check(message)?;
        }
        let column = |f: fn(&Message) -> Option<&str>| messages.iter().map(f).collect::<Vec<_>>();
        let done = sqlx::query(INSERT_MANY)
            .bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
            .bind(
                messages
                    .iter()
                    .map(|m| m.topic.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(column(|m| m.key.as_deref()))
            .bind(column(|m| m.tag.as_deref()))
            .bind(
                messages
                    .iter()
                    .map(|m| Json(&m.headers))
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.payload.as_ref())
                    .collect::<Vec<_>>(),
            )
            .bind(messages.iter().map(|m| m.created_at).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.available_at).collect::<Vec<_>>())
            .bind(messages.iter().map(delay_micros).collect::<Vec<_>>())
            .execute(executor)
            .await
            .map_err(Error::from_db)?;
        Ok(done.rows_affected())
    }
}

fn delay_micros(message: &Message) -> Option<i64> {
    message
        .delay
        .map(|delay| i64::try_from(delay.as_micros()).unwrap_or(i64::MAX))
}
