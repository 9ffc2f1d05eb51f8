//! The outbox on Postgres in one program: two order transactions (one rolled back), a relay that
//! publishes to stdout, and the failure table for a message the "broker" refuses.
//!
//! ```sh
//! psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE courier_example"
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/courier_example cargo run --example outbox_postgres
//! ```
//!
//! It creates its tables in the `outbox` schema and an `example_orders` table, and leaves them
//! (hence a database of its own: `DROP DATABASE courier_example` when done).

use std::time::Duration;

use anyhow::Context;
use courier::outbox::{
    Backoff, FailureFilter, Failures, MIGRATOR, Message, Outbox, Permanent, Relay, RelayState,
};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, service_fn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .context("set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres")?;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    MIGRATOR
        .run(&pool)
        .await
        .context("running the outbox migrations")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS example_orders (id bigint PRIMARY KEY, total bigint)")
        .execute(&pool)
        .await?;
    let outbox = Outbox::new();
    let first_id: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) + 1 FROM example_orders")
        .fetch_one(&pool)
        .await?;

    // 1. An order and its event commit together.
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO example_orders VALUES ($1, 1999)")
        .bind(first_id)
        .execute(&mut *tx)
        .await?;
    let created = Message::json("orders.created", &serde_json::json!({ "order": first_id }))?
        .with_key(format!("order-{first_id}"));
    outbox.enqueue(&mut *tx, &created).await?;
    tx.commit().await?;
    println!("committed order {first_id} with message {}", created.id);

    // 2. A rolled-back order leaves no message behind.
    let mut tx = pool.begin().await?;
    outbox
        .enqueue(&mut *tx, &Message::new("orders.created", "never sent"))
        .await?;
    tx.rollback().await?;
    println!("rolled back a second order: its message is gone with it");

    // 3. A message the broker refuses for good goes to the failure table.
    let poison = Message::new("orders.unknown-topic", "poison");
    outbox.enqueue(&pool, &poison).await?;

    let publisher = service_fn(|message: Message| async move {
        if message.topic == "orders.unknown-topic" {
            return Err(BoxError::from(Permanent::new("no such topic")));
        }
        println!(
            "published {} to {}: {}",
            message.id,
            message.topic,
            String::from_utf8_lossy(&message.payload)
        );
        Ok::<_, BoxError>(())
    });
    let relay = Relay::builder(pool.clone(), publisher)
        .name("example-relay")
        .backoff(Backoff {
            base: Duration::from_millis(50),
            ..Backoff::default()
        })
        .build()?;
    let mut state = relay.state();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    state.wait_for(|s| *s == RelayState::Idle).await?;
    shutdown.cancel();
    task.await??;

    for failed in Failures::new()
        .list(&pool, &FailureFilter::all().ids([poison.id]))
        .await?
    {
        println!(
            "in the failure table: {} after {} attempt(s): {}",
            failed.message.id, failed.message.attempts, failed.last_error
        );
    }
    Failures::new()
        .purge(&pool, &FailureFilter::all().ids([poison.id]))
        .await?;
    println!(
        "left in this database: the outbox schema and example_orders ({} order(s)); the \
         README runs this example in a database of its own, courier_example, to drop when done",
        first_id
    );
    Ok(())
}
