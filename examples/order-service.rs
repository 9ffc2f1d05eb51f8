//! order-service: an HTTP API whose `POST /orders` writes the order and an `ORDER_CREATED` message
//! in one transaction. The `outbox-relay` sidecar publishes the message to the broker its
//! `--broker` names (broker-lite, `nats://…`, `amqp://…`); `payment-service` consumes it. This
//! service never talks to the broker: changing brokers changes only those two addresses.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/orders cargo run --example order-service
//! curl -s -XPOST localhost:8080/orders -H 'content-type: application/json' \
//!      -d '{"customer": "ada", "amount_cents": 1999}'
//! ```
//!
//! Environment: `DATABASE_URL` (required), `LISTEN` (default `127.0.0.1:8080`). The service runs
//! the outbox migrations and creates its `orders` table on start. A created order answers with
//! its `message_id` (also logged), which `broker-lite trace <message id>` follows. `"amount_cents":
//! 0` is refused *after* the message was enqueued, to show that a rolled-back order never
//! produces a message: the answer says so.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use courier::outbox::{MIGRATOR, Message, Outbox};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
struct NewOrder {
    customer: String,
    amount_cents: i64,
}

/// The `ORDER_CREATED` event.
#[derive(Debug, Serialize, Deserialize)]
struct OrderCreated {
    order_id: Uuid,
    customer: String,
    amount_cents: i64,
}

/// The answer to `POST /orders`: the event, and the id of the message that carries it.
#[derive(Debug, Serialize)]
struct Created {
    #[serde(flatten)]
    order: OrderCreated,
    message_id: Uuid,
}

#[derive(Clone)]
struct App {
    pool: PgPool,
    outbox: Outbox,
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
        .context("set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/orders")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let pool = PgPool::connect(&url)
        .await
        .context("connecting to the database")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("running the outbox migrations")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
             id uuid PRIMARY KEY, customer text NOT NULL, amount_cents bigint NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;

    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/orders/count", get(count_orders))
        .with_state(App {
            pool,
            outbox: Outbox::new(),
        });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("order-service listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Writes the order and its event atomically: both or neither.
async fn create_order(
    State(app): State<App>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<Created>), (StatusCode, String)> {
    let event = OrderCreated {
        order_id: Uuid::now_v7(),
        customer: order.customer,
        amount_cents: order.amount_cents,
    };
    let mut tx = app.pool.begin().await.map_err(internal)?;
    sqlx::query("INSERT INTO orders (id, customer, amount_cents) VALUES ($1, $2, $3)")
        .bind(event.order_id)
        .bind(&event.customer)
        .bind(event.amount_cents)
        .execute(&mut *tx)
        .await
        .map_err(internal)?;
    let message = Message::json("ORDER_CREATED", &event)
        .map_err(internal)?
        .with_key(event.order_id.to_string());
    app.outbox
        .enqueue(&mut *tx, &message)
        .await
        .map_err(internal)?;
    if event.amount_cents <= 0 {
        // Rolls back the order *and* its message: the message never existed for anyone.
        tx.rollback().await.map_err(internal)?;
        tracing::info!(order = %event.order_id, message_id = %message.id, "order rolled back with its message");
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "amount_cents must be positive: order {} was rolled back together with its \
                 message {}, so no message exists for it and nothing is published\n",
                event.order_id, message.id
            ),
        ));
    }
    tx.commit().await.map_err(internal)?;
    tracing::info!(order = %event.order_id, message_id = %message.id, "order committed with its message");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            order: event,
            message_id: message.id,
        }),
    ))
}

async fn count_orders(State(app): State<App>) -> Result<String, (StatusCode, String)> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.pool)
        .await
        .map_err(internal)?;
    Ok(format!("{count}\n"))
}

fn internal(error: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"))
}
