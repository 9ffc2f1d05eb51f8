//! The whole product in one process, nothing to install: `cargo run -p courier-quickstart`.
//!
//! An order service writes orders and their `ORDER_CREATED` messages to a SQLite database in one
//! transaction each; the relay publishes the outbox to an embedded broker-lite (SYNC_FLUSH: a send
//! is acknowledged after fsync), or to the broker `--broker` names (`nats://…`, `amqp://…`, a
//! broker-lite `host:port`: only the address changes); a payment consumer handles each message behind the idempotency
//! layer, which records the message in the same SQLite transaction as the payment. Along the way:
//! a rolled-back order that never produces a message, a handler failure that is redelivered and then
//! succeeds, a producer retry that the broker (same message id) or the consumer skips, and a poison message that is dead-lettered after
//! its attempts. It prints what happened and exits 0, or 1 with what went wrong.

mod account;
mod payments;
mod world;

use std::time::Duration;

use anyhow::Context;
use courier::middleware::BrokerAddress;
use courier::outbox::{Message, Outbox};
use serde_json::json;
use tower::ServiceExt;

use account::Account;
use world::World;

/// How long the quickstart waits for the whole story before it gives up; it takes about a second.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs the story end to end on an embedded broker-lite, printing each step, and checks its
/// outcome: two payments, an empty outbox and failure table, one dead letter. The error names
/// what did not happen.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// courier_quickstart::run().await?;
/// # Ok(())
/// # }
/// ```
pub async fn run() -> anyhow::Result<()> {
    run_with(None).await
}

/// The same story against `broker` (NATS JetStream, RabbitMQ, a standalone broker-lite), or an
/// embedded broker-lite when `None`. Only the address differs: the publisher and the source come
/// from it ([`BrokerAddress::publisher`], [`BrokerAddress::subscribe`]). The run uses a topic and
/// group of its own (`ORDER_CREATED_<run>`, `payments-<run>`) and deletes their streams or queues
/// at the end.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let nats = "nats://127.0.0.1:4222".parse()?;
/// courier_quickstart::run_with(Some(nats)).await?;
/// # Ok(())
/// # }
/// ```
pub async fn run_with(broker: Option<BrokerAddress>) -> anyhow::Result<()> {
    let account = Account::new();
    let world = World::start(&account, broker).await?;
    let broker = match &world.embedded {
        Some((broker, path)) => format!(
            "embedded broker-lite (SYNC_FLUSH) at {} (data in {})",
            broker.addr(),
            path.display()
        ),
        None => format!("{} at {}", world.broker.kind(), world.broker),
    };
    account.heading(&format!(
        "courier quickstart: SQLite outbox + {}\n  database {}\n  broker   {broker}\n  topic    {}, consumer group {}",
        world.broker.kind(),
        world.database_path.display(),
        world.subscription.topic(),
        world.subscription.group(),
    ));

    account
        .heading("1. The order service writes orders, each with its message, in one transaction");
    let first = place_order(
        &world,
        &account,
        "order-1001",
        json!({"order": "order-1001", "amount_cents": 1999}),
        true,
    )
    .await?;
    place_order(
        &world,
        &account,
        "order-1002",
        json!({"order": "order-1002", "amount_cents": 500}),
        false,
    )
    .await?;
    place_order(
        &world,
        &account,
        "order-1003",
        json!({"order": "order-1003", "amount_cents": 4200}),
        true,
    )
    .await?;
    place_order(&world, &account, "order-1004", "this is not JSON", true).await?;

    account.heading(
        "2. The relay publishes the outbox; the payment consumer handles each message\n   \
         (relay and consumer run concurrently: a payment may be logged before the relay hears the ack)",
    );
    account
        .wait_until(
            PATIENCE,
            "both orders paid and the poison message dead-lettered",
            |s| s.paid.len() == 2 && s.dead_letters > 0,
        )
        .await?;

    account.heading("3. A producer retry publishes order-1001's message a second time");
    // Ok means the broker acknowledged it, as for the relay.
    let published = world
        .publisher()
        .await?
        .oneshot(first)
        .await
        .map_err(anyhow::Error::from_boxed)
        .context("sending the duplicate")?;
    if published.deduplicated {
        account.line(
            "broker      stored nothing new: it already holds this message id (broker-lite's \
             deduplication window, or Nats-Msg-Id inside the stream's duplicate window), so the \
             consumer never sees it",
        );
    } else {
        account
            .wait_until(PATIENCE, "the duplicate to be skipped", |s| {
                s.duplicates > 0
            })
            .await?;
    }

    account.heading("4. What is in the database and the broker now");
    let summary = world.summary().await?;
    account.line(&format!(
        "payments: {} ({}); orders: {}; outbox: {} pending; relay failure table: {}; \
         dead letters in {}: {}",
        summary.payments.len(),
        summary.payments.join(", "),
        summary.orders,
        summary.pending,
        summary.failures,
        world.dead_letter_place(),
        summary.dead_letters,
    ));
    world.stop().await?;
    summary.check()?;
    account.heading(
        "Everything as expected: no message lost, none invented, every payment made once.",
    );
    Ok(())
}

/// Inserts an order and enqueues its message in one transaction, then commits or rolls back;
/// returns the message.
async fn place_order(
    world: &World,
    account: &Account,
    order: &str,
    payload: impl Into<Payload>,
    commit: bool,
) -> anyhow::Result<Message> {
    let topic = world.subscription.topic();
    let message = match payload.into() {
        Payload::Json(value) => Message::json(topic, &value)?,
        Payload::Raw(text) => Message::new(topic, text),
    }
    .with_key(order);
    // SQLite: take the write lock at BEGIN, so the transaction never fails half-way as "locked".
    let mut tx = world.pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("INSERT INTO orders (id) VALUES (?1)")
        .bind(order)
        .execute(&mut *tx)
        .await?;
    Outbox::new().enqueue(&mut *tx, &message).await?;
    if commit {
        tx.commit().await?;
        account.line(&format!("committed   {order} with message {}", message.id));
    } else {
        tx.rollback().await?;
        account.line(&format!("rolled back {order}: its message went with it"));
    }
    Ok(message)
}

/// A message body: JSON, or raw text for the poison message.
enum Payload {
    Json(serde_json::Value),
    Raw(&'static str),
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Self::Json(value)
    }
}

impl From<&'static str> for Payload {
    fn from(text: &'static str) -> Self {
        Self::Raw(text)
    }
}
