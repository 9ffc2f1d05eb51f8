//! Scenario 5, consumer throughput with and without the idempotency layer on Postgres. Deliveries
//! are handed to the service directly (no broker), 64 in flight; each one inserts one business row
//! in a transaction, with the layer also recording its message id in that transaction.

use std::time::Instant;

use courier::middleware::{Delivery, IdempotencyLayer, TxDelivery};
use courier::outbox::Message;
use futures::StreamExt;
use sqlx::{Executor, PgPool};
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::Params;
use crate::report::Report;

pub(crate) const SCENARIO: &str =
    "5. Consumer throughput, idempotency layer on Postgres (64 in flight, one row per delivery)";
pub(crate) const CONCURRENCY: usize = 64;

pub(crate) fn handler()
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

/// The same effect without the layer: the handler's own transaction, nothing recorded.
fn plain_handler(
    pool: PgPool,
) -> impl Service<Delivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(move |delivery: Delivery| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
                .bind(delivery.message.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, BoxError>(())
        }
    })
}

async fn once<S>(pool: &PgPool, service: S, count: usize) -> anyhow::Result<f64>
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
    anyhow::ensure!(
        failed == 0 && effects == count as i64,
        "{failed} deliveries failed, {effects} effects of {count}"
    );
    Ok(count as f64 / elapsed.as_secs_f64())
}

pub(crate) async fn run(pool: &PgPool, params: &Params, report: &mut Report) -> anyhow::Result<()> {
    let count = params.idempotency_count;
    let plain = once(pool, plain_handler(pool.clone()), count).await?;
    report.add(
        SCENARIO,
        "without the layer (handler's own tx)",
        "deliveries/s",
        plain,
    );
    let layer = IdempotencyLayer::new(pool.clone());
    let unbatched = once(pool, layer.layer(handler()), count).await?;
    report.add(
        SCENARIO,
        "idempotency layer, unbatched",
        "deliveries/s",
        unbatched,
    );
    report.add(
        SCENARIO,
        "idempotency unbatched / without",
        "x",
        unbatched / plain,
    );
    let batched = once(pool, layer.batched(128).workers(2).layer(handler()), count).await?;
    report.add(
        SCENARIO,
        "idempotency layer, batched 128 x 2 workers",
        "deliveries/s",
        batched,
    );
    report.add(
        SCENARIO,
        "idempotency batched / without",
        "x",
        batched / plain,
    );
    Ok(())
}
