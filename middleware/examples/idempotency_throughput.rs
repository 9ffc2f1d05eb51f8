//! Deliveries per second through the idempotency layer on Postgres, unbatched and batched.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run -p courier-middleware --example idempotency_throughput -- 20000
//! ```
//!
//! Each delivery records its idempotency key and inserts one business row in the same
//! transaction. Uses a scratch database `courier_idempotency_bench`, recreated on each run.

use std::time::Instant;

use courier_middleware::{Delivery, IdempotencyLayer, TxDelivery};
use courier_outbox::Message;
use futures::StreamExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tower::{BoxError, Layer, Service, ServiceExt};

const CONCURRENCY: usize = 64;

fn handler()
-> impl Service<TxDelivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(|request: TxDelivery| async move {
        let mut conn = request.tx().lock().await;
        sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
            .bind(request.delivery.message.id)
            .execute(&mut *conn)
            .await?;
        Ok::<_, BoxError>(())
    })
}

async fn run<S>(label: &str, pool: &PgPool, service: S, count: usize) -> anyhow::Result<()>
where
    S: Service<Delivery, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    pool.execute("TRUNCATE effects, courier_inbox.processed")
        .await?;
    let deliveries: Vec<Delivery> = (0..count)
        .map(|n| Delivery::new(Message::new("bench", format!("{n}")), "bench"))
        .collect();
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(deliveries)
        .map(|delivery| service.clone().oneshot(delivery))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await?;
    println!(
        "{label:<28} {:>8.0} deliveries/s  ({count} in {elapsed:.2?}, {failed} failed, {effects} effects)",
        count as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args().nth(1).map_or(Ok(20_000), |n| n.parse())?;
    let url = std::env::var("DATABASE_URL")?;
    let mut admin = PgConnection::connect(&url).await?;
    admin
        .execute("DROP DATABASE IF EXISTS courier_idempotency_bench")
        .await?;
    admin
        .execute("CREATE DATABASE courier_idempotency_bench")
        .await?;
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let pool = PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32 + 4)
        .connect(&format!("{base}/courier_idempotency_bench"))
        .await?;
    courier_outbox::MIGRATOR.run(&pool).await?;
    pool.execute("CREATE TABLE effects (message_id uuid NOT NULL)")
        .await?;

    let layer = IdempotencyLayer::new(pool.clone());
    run("unbatched", &pool, layer.layer(handler()), count).await?;
    for (batch, workers) in [(64, 1), (128, 2), (256, 4)] {
        let service = layer.batched(batch).workers(workers).layer(handler());
        run(
            &format!("batched {batch} x {workers} workers"),
            &pool,
            service,
            count,
        )
        .await?;
    }
    pool.close().await;
    admin
        .execute("DROP DATABASE IF EXISTS courier_idempotency_bench")
        .await?;
    Ok(())
}
