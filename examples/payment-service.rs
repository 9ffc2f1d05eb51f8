//! payment-service: consumes `ORDER_CREATED` through the idempotency layer, writes a payment and
//! emits `PAYMENT_DONE` through its own outbox, all in one transaction with the idempotency
//! record. A redelivered or duplicated `ORDER_CREATED` is acked without a second payment.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/payments BROKER=127.0.0.1:9876 \
//!     cargo run --example payment-service
//! # the same on NATS JetStream or RabbitMQ: only the address changes
//! BROKER=nats://127.0.0.1:4222 ...
//! BROKER=amqp://guest:guest@127.0.0.1:5672/%2f ...
//! ```
//!
//! Environment: `DATABASE_URL` (required), `BROKER` (default `127.0.0.1:9876`, broker-lite; its
//! form picks the broker, as `outbox-relay --broker` does). Subscribing provisions what the broker
//! needs (the NATS stream `ORDER_CREATED`, the RabbitMQ exchange `ORDER_CREATED` and quorum queue
//! `payment-service`). A second `outbox-relay` pointed at the payments database publishes
//! `PAYMENT_DONE`.

use anyhow::Context;
use courier::middleware::{
    BrokerAddress, CatchPanicLayer, ConsumeTimeoutLayer, Consumer, IdempotencyLayer, Reject,
    Subscription, TraceLayer, TxDelivery,
};
use courier::outbox::{MIGRATOR, Message, Outbox};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder};
use uuid::Uuid;

/// What order-service publishes.
#[derive(Debug, Deserialize)]
struct OrderCreated {
    order_id: Uuid,
    customer: String,
    amount_cents: i64,
}

/// What this service publishes.
#[derive(Debug, Serialize)]
struct PaymentDone {
    payment_id: Uuid,
    order_id: Uuid,
    amount_cents: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // sqlx's Postgres notices ("relation ... already exists, skipping") are not news at startup.
    tracing_subscriber::fmt()
        .with_env_filter("info,sqlx::postgres::notice=warn")
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("DATABASE_URL")
        .context("set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/payments")?;
    let broker: BrokerAddress = std::env::var("BROKER")
        .unwrap_or_else(|_| "127.0.0.1:9876".to_owned())
        .parse()?;
    let pool = PgPool::connect(&url)
        .await
        .context("connecting to the database")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("running the outbox and inbox migrations")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS payments (
             id uuid PRIMARY KEY, order_id uuid NOT NULL UNIQUE, customer text NOT NULL,
             amount_cents bigint NOT NULL, paid_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;

    let source = broker
        .subscribe(&Subscription::new("ORDER_CREATED", "payment-service"))
        .await
        .map_err(anyhow::Error::from_boxed)
        .with_context(|| format!("subscribing to ORDER_CREATED at {broker}"))?;
    let outbox = Outbox::new();
    let handler = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(CatchPanicLayer::new())
        .layer(ConsumeTimeoutLayer::default())
        .layer(IdempotencyLayer::new(pool.clone()))
        .service_fn(move |request: TxDelivery| {
            let outbox = outbox.clone();
            async move {
                // A payload that is not an order never will be: dead-letter it at once.
                let order: OrderCreated = request.delivery.message.payload_json().map_err(Reject::new)?;
                let payment = PaymentDone {
                    payment_id: Uuid::now_v7(),
                    order_id: order.order_id,
                    amount_cents: order.amount_cents,
                };
                let mut tx = request.tx().lock().await;
                sqlx::query("INSERT INTO payments (id, order_id, customer, amount_cents) VALUES ($1, $2, $3, $4)")
                    .bind(payment.payment_id)
                    .bind(order.order_id)
                    .bind(&order.customer)
                    .bind(order.amount_cents)
                    .execute(&mut *tx)
                    .await?;
                let done = Message::json("PAYMENT_DONE", &payment)?.with_key(order.order_id.to_string());
                outbox.enqueue(&mut *tx, &done).await?;
                println!("paid order {} ({} cents)", order.order_id, order.amount_cents);
                Ok::<_, BoxError>(())
            }
        });

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    println!(
        "payment-service consuming ORDER_CREATED from {} at {broker}",
        broker.kind()
    );
    Consumer::builder(source, handler)
        .group("payment-service")
        .build()
        .run(shutdown)
        .await;
    Ok(())
}
