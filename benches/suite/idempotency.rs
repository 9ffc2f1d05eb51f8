//! Scenario 5, consumer throughput with and without the idempotency layer on Postgres. Deliveries
//! are handed to the service directly (no broker), 64 in flight; each one inserts one business row
//! in a transaction, with the layer also recording its message id in that transaction.
//!
//! Like for like: both handlers write the same row into the same table, `idem_effects`, which has
//! a primary key as a business table does (the suite's shared `effects` table has no index at all,
//! so a handler writing there does less than any real one, and the record looks dearer than it
//! is). The variants run in alternating rounds, so that a change of load on the shared machine
//! falls on all of them alike; each variant's rate is its deliveries over its summed time.

use std::time::{Duration, Instant};

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

/// The transactional handler of scenarios 7 and 10: one row into the shared `effects` table.
pub(crate) fn handler()
-> impl Service<TxDelivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    handler_with("INSERT INTO effects (message_id) VALUES ($1)")
}

/// The row this scenario's handlers write, with or without the layer.
const EFFECT: &str = "INSERT INTO idem_effects (message_id) VALUES ($1)";

/// A transactional handler running `statement` with the message id in the layer's transaction.
fn handler_with(
    statement: &'static str,
) -> impl Service<TxDelivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(move |request: TxDelivery| async move {
        let mut conn = request.tx().lock().await;
        sqlx::query(statement)
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
            sqlx::query(EFFECT)
                .bind(delivery.message.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, BoxError>(())
        }
    })
}

/// Rounds per repeat; the variants alternate round by round.
const ROUNDS: usize = 4;

/// Runs `count` deliveries through `service`, 64 in flight, on empty tables; returns the time.
async fn once<S>(pool: &PgPool, service: S, count: usize) -> anyhow::Result<Duration>
where
    S: Service<Delivery, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    pool.execute("TRUNCATE idem_effects, courier_inbox.processed")
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
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM idem_effects")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        failed == 0 && effects == count as i64,
        "{failed} deliveries failed, {effects} effects of {count}"
    );
    Ok(elapsed)
}

pub(crate) async fn run(pool: &PgPool, params: &Params, report: &mut Report) -> anyhow::Result<()> {
    pool.execute("CREATE TABLE IF NOT EXISTS idem_effects (message_id uuid PRIMARY KEY)")
        .await?;
    let per_round = params.idempotency_count.div_ceil(ROUNDS);
    let layer = IdempotencyLayer::new(pool.clone());
    let (mut plain, mut unbatched, mut batched) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        plain += once(pool, plain_handler(pool.clone()), per_round).await?;
        unbatched += once(pool, layer.layer(handler_with(EFFECT)), per_round).await?;
        let batching = layer.batched(128).workers(2).layer(handler_with(EFFECT));
        batched += once(pool, batching, per_round).await?;
    }
    let rate = |took: Duration| (per_round * ROUNDS) as f64 / took.as_secs_f64();
    let (plain, unbatched, batched) = (rate(plain), rate(unbatched), rate(batched));
    report.add(
        SCENARIO,
        "without the layer (handler's own tx)",
        "deliveries/s",
        plain,
    );
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
