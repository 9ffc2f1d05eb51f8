//! The short path end to end: an order and its message in one transaction, the relay, and an
//! idempotent payment consumer, all from `courier::App`.
//!
//! ```sh
//! cargo run --example minimal
//! ```
//!
//! It brings its own SQLite file and an embedded broker-lite so that nothing needs installing; in
//! a service, the pool is yours and the address is your broker's (`"broker-1:9876;broker-2:9876"`).

use courier::outbox::{Message, Outbox};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker =
        broker_lite::embedded::start(dir.path().join("broker"), Default::default()).await?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("shop.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePool::connect_with(options).await?;
    courier::outbox::migrate(&pool).await?;
    sqlx::query("CREATE TABLE payments (order_id TEXT PRIMARY KEY)")
        .execute(&pool)
        .await?;

    // The order service: the message commits with the business write, or not at all.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    Outbox::new()
        .enqueue(
            &mut *tx,
            &Message::new("ORDER_CREATED", "order-7").with_key("order-7"),
        )
        .await?;
    tx.commit().await?;

    // The payment service: relay + consumer with trace, catch-panic, timeout and idempotency.
    let done = CancellationToken::new();
    let paid = done.clone();
    let app = courier::App::builder(pool.clone(), broker.addr().to_string()).consume(
        "payments",
        "ORDER_CREATED",
        move |request| {
            let paid = paid.clone();
            async move {
                let order = String::from_utf8(request.delivery.message.payload.to_vec())?;
                let mut tx = request.tx().lock().await;
                sqlx::query("INSERT INTO payments (order_id) VALUES (?1)")
                    .bind(&order)
                    .execute(&mut *tx)
                    .await?;
                println!("paid {order}, once: the idempotency record commits with the payment");
                paid.cancel();
                Ok(())
            }
        },
    );
    app.build().run(done).await?;
    broker.shutdown().await?;
    Ok(())
}
