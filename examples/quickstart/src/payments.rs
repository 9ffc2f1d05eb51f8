//! The payment consumer: a transactional handler behind the idempotency layer, and a thin wrapper
//! that narrates what became of each delivery.

use courier::middleware::{Delivery, Handled, IdempotencyLayer, TxDelivery};
use sqlx::{Sqlite, SqlitePool};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

use super::account::Account;

/// Deliveries of one message before the consumer gives up and dead-letters it.
pub(crate) const MAX_DELIVERIES: u32 = 3;

/// The order whose first payment attempt fails, to show a redelivery.
pub(crate) const FLAKY_ORDER: &str = "order-1003";

/// The consumer's handler: `Delivery` in, narrated, through the idempotency layer, into
/// [`pay`].
pub(crate) fn handler(
    pool: SqlitePool,
    account: Account,
) -> impl Service<Delivery, Response = Handled<()>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let idempotent = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(pool))
        .service_fn(pay);
    service_fn(move |delivery: Delivery| {
        let (idempotent, account) = (idempotent.clone(), account.clone());
        async move {
            let order = delivery.message.key.clone().unwrap_or_default();
            let attempt = delivery.attempt;
            let result = idempotent.oneshot(delivery).await;
            match &result {
                Ok(Handled::Processed(())) => {
                    account.line(&format!("payments    {order} paid (attempt {attempt}); record and payment committed together"));
                    account.record(|s| {
                        s.paid.insert(order);
                    });
                }
                Ok(Handled::Duplicate) => {
                    account.line(&format!("payments    {order} delivered again: already recorded, acked without paying twice"));
                    account.record(|s| s.duplicates += 1);
                }
                Err(error) if attempt >= MAX_DELIVERIES => account.line(&format!(
                    "payments    {order} attempt {attempt} failed: {error}; last attempt, dead-lettered"
                )),
                Err(error) => account.line(&format!(
                    "payments    {order} attempt {attempt} failed: {error}; rolled back, redelivered later"
                )),
            }
            result
        }
    })
}

/// Pays an order, writing through the transaction the idempotency layer opened.
async fn pay(request: TxDelivery<Sqlite>) -> Result<(), BoxError> {
    let message = &request.delivery.message;
    let order: serde_json::Value = message
        .payload_json()
        .map_err(|error| format!("the payload is not an order ({error})"))?;
    let id = order["order"].as_str().ok_or("the order has no id")?;
    if id == FLAKY_ORDER && request.delivery.attempt == 1 {
        return Err("the payment gateway timed out".into());
    }
    let mut conn = request.tx().lock().await;
    sqlx::query("INSERT INTO payments (order_id, amount_cents) VALUES (?1, ?2)")
        .bind(id)
        .bind(order["amount_cents"].as_i64().unwrap_or(0))
        .execute(&mut *conn)
        .await?;
    Ok(())
}
