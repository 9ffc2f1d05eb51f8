//! Postgres-only behaviour of the idempotency layer (the cases every store shares are in
//! `idempotency.rs`, the MySQL-only ones in `mysql_only.rs`).

mod store_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use courier_middleware::{Delivery, Handled, IdempotencyLayer, TxDelivery};
use courier_outbox::Message;
use sqlx::Postgres;
use store_support::Store;
use tower::{BoxError, Layer, ServiceExt};

courier_test_support::postgres_for_tests!();

fn delivery(message: &Message) -> Delivery {
    Delivery::new(message.clone(), "billing")
}

/// A failed statement aborts a Postgres transaction, and `COMMIT` of an aborted transaction rolls
/// back *without an error*. A handler that swallows the failure and answers `Ok` would have its
/// payment and its record rolled back while the delivery is acked: the message lost. The layer
/// checks the transaction is still alive before committing, and fails the delivery instead.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_handler_that_swallows_a_failed_statement_is_not_acked_on_postgres(pool: sqlx::PgPool) {
    <Postgres as Store>::create_effects(&pool).await;
    let swallow = Arc::new(AtomicU32::new(1));
    let handler = {
        let swallow = swallow.clone();
        tower::service_fn(move |request: TxDelivery<Postgres>| {
            let swallow = swallow.clone();
            async move {
                let mut conn = request.tx().lock().await;
                let message = &request.delivery.message;
                <Postgres as Store>::insert_effect(&mut conn, message.id, &request.delivery.group)
                    .await?;
                if swallow
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    // The error is dropped, as a careless handler would.
                    <Postgres as Store>::failing_statement(&mut conn).await;
                }
                Ok::<(), BoxError>(())
            }
        })
    };
    let service = IdempotencyLayer::new(pool.clone()).layer(handler);
    let message = Message::new("payments", "p");

    let first = service.clone().oneshot(delivery(&message)).await;
    assert!(
        first.is_err(),
        "a delivery whose transaction was aborted must not be acked: {first:?}"
    );
    assert_eq!(<Postgres as Store>::effects(&pool).await, 0);
    assert_eq!(<Postgres as Store>::records(&pool).await, 0);

    let redelivered = service
        .oneshot(delivery(&message).with_attempt(2))
        .await
        .unwrap();
    assert_eq!(redelivered, Handled::Processed(()));
    assert_eq!(<Postgres as Store>::effects(&pool).await, 1);
    assert_eq!(<Postgres as Store>::records(&pool).await, 1);
}

/// A handler that ends its transaction itself (`ROLLBACK` on its `Tx`) and answers `Ok` took the
/// record with it: acking would lose the message, as its payment rolled back too. A `COMMIT` after
/// it would only warn that no transaction is in progress, so the layer checks with a savepoint,
/// which fails outside a live transaction, and fails the delivery instead.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_handler_that_rolls_its_transaction_back_itself_is_not_acked_on_postgres(
    pool: sqlx::PgPool,
) {
    <Postgres as Store>::create_effects(&pool).await;
    let end_it = Arc::new(AtomicU32::new(1));
    let handler = {
        let end_it = end_it.clone();
        tower::service_fn(move |request: TxDelivery<Postgres>| {
            let end_it = end_it.clone();
            async move {
                let mut conn = request.tx().lock().await;
                let message = &request.delivery.message;
                <Postgres as Store>::insert_effect(&mut conn, message.id, &request.delivery.group)
                    .await?;
                if end_it
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    sqlx::Executor::execute(&mut *conn, "ROLLBACK").await?;
                }
                Ok::<(), BoxError>(())
            }
        })
    };
    let service = IdempotencyLayer::new(pool.clone()).layer(handler);
    let message = Message::new("payments", "p");

    let first = service.clone().oneshot(delivery(&message)).await;
    assert!(
        first.is_err(),
        "a delivery whose handler rolled its transaction back must not be acked: {first:?}"
    );
    assert_eq!(<Postgres as Store>::effects(&pool).await, 0);
    assert_eq!(<Postgres as Store>::records(&pool).await, 0);

    let redelivered = service
        .oneshot(delivery(&message).with_attempt(2))
        .await
        .unwrap();
    assert_eq!(redelivered, Handled::Processed(()));
    assert_eq!(<Postgres as Store>::effects(&pool).await, 1);
    assert_eq!(<Postgres as Store>::records(&pool).await, 1);
}
