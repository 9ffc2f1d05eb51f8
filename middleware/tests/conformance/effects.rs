//! The handler every case runs: trace, catch-panic, the idempotency layer on Postgres, and a body
//! that writes one effect row per handled message in the idempotency transaction and then does
//! what the case's script says for that delivery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_middleware::{
    CatchPanicLayer, Delivery, IdempotencyLayer, Reject, Retry, TraceLayer, TxDelivery,
};
use sqlx::PgPool;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder};
use uuid::Uuid;

/// What the handler does with one delivery, after writing its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Commit: the effect stays, the delivery is acked.
    Succeed,
    /// A retryable error (with this redelivery delay): the effect is rolled back.
    Fail(Option<Duration>),
    /// A permanent failure: dead-lettered at once, the effect rolled back.
    Reject,
    /// A panic inside the transaction.
    Panic,
    /// Never answers: the runtime's consume timeout abandons the call.
    Hang,
}

/// One call of the handler body (inside the idempotency layer).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) id: Uuid,
    pub(crate) attempt: u32,
    pub(crate) at: Instant,
}

/// What the handler saw: every delivery that reached the stack (before deduplication), and every
/// call of the body.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    pub(crate) deliveries: Arc<Mutex<Vec<Delivery>>>,
    pub(crate) calls: Arc<Mutex<Vec<Call>>>,
}

impl Seen {
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub(crate) fn calls_of(&self, id: Uuid) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.id == id).collect()
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }
}

/// Creates the effects table of the test's database.
pub(crate) async fn create_table(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE effects (seq bigserial PRIMARY KEY, message_id uuid NOT NULL, payload text NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// How many effects message `id` has.
pub(crate) async fn effects_of(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE message_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The payloads of the committed effects, in commit order.
pub(crate) async fn effects(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT payload FROM effects ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The handler stack: `script` decides what each delivery does.
pub(crate) fn handler<F>(
    pool: &PgPool,
    seen: &Seen,
    script: F,
) -> impl Service<Delivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
where
    F: Fn(&Delivery) -> Act + Clone + Send + Sync + 'static,
{
    let deliveries = seen.deliveries.clone();
    let calls = seen.calls.clone();
    ServiceBuilder::new()
        .layer(TraceLayer::new())
        // Whether the idempotency layer ran the body or skipped a duplicate shows in `Seen`.
        .map_response(|_handled| ())
        .map_request(move |delivery: Delivery| {
            deliveries.lock().unwrap().push(delivery.clone());
            delivery
        })
        .layer(CatchPanicLayer::new())
        .layer(IdempotencyLayer::new(pool.clone()))
        .service_fn(move |request: TxDelivery| {
            let calls = calls.clone();
            let script = script.clone();
            async move {
                let delivery = &request.delivery;
                let payload = String::from_utf8(delivery.message.payload.to_vec())?;
                calls.lock().unwrap().push(Call {
                    id: delivery.message.id,
                    attempt: delivery.attempt,
                    at: Instant::now(),
                });
                {
                    let mut conn = request.tx().lock().await;
                    sqlx::query("INSERT INTO effects (message_id, payload) VALUES ($1, $2)")
                        .bind(delivery.message.id)
                        .bind(&payload)
                        .execute(&mut *conn)
                        .await?;
                }
                match script(delivery) {
                    Act::Succeed => Ok::<(), BoxError>(()),
                    Act::Fail(None) => Err(Retry::new("the script fails this delivery").into()),
                    Act::Fail(Some(delay)) => {
                        Err(Retry::after(delay, "the script fails this delivery").into())
                    }
                    Act::Reject => Err(Reject::new("the script rejects this message").into()),
                    Act::Panic => panic!("the script panics on this delivery"),
                    Act::Hang => {
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                }
            }
        })
}
