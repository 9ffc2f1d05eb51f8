//! The whole flow in one process: outbox → relay → producer stack → (in-memory broker) →
//! consumer runtime → idempotent handler, with duplicates from the broker absorbed.

use std::time::Duration;

use courier_middleware::{
    CatchPanicLayer, Consumer, IdempotencyLayer, MemorySource, RequireSendOkLayer, SendRetryLayer,
    SendTimeoutLayer, TRACEPARENT, TraceLayer, TracePublishLayer, TxDelivery,
};
use courier_outbox::{Message, Outbox, Relay};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder};

courier_test_support::postgres_for_tests!();

const PATIENCE: Duration = Duration::from_secs(30);

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn committed_messages_are_handled_once_each_even_when_the_broker_delivers_twice(
    pool: PgPool,
) {
    sqlx::query("CREATE TABLE effects (message_id uuid PRIMARY KEY, traceparent text)")
        .execute(&pool)
        .await
        .unwrap();
    let broker = MemorySource::new("billing");
    let shutdown = CancellationToken::new();

    // Producer side: the relay publishes through the producer stack into the broker.
    let publisher = ServiceBuilder::new()
        .layer(TracePublishLayer::new())
        .layer(SendRetryLayer::default())
        .layer(SendTimeoutLayer::default())
        .layer(RequireSendOkLayer::new())
        .service(broker.clone());
    let relay = Relay::builder(pool.clone(), publisher).build().unwrap();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));

    // Consumer side: trace, catch panics, record idempotently with the handler's write.
    let handler = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(CatchPanicLayer::new())
        .layer(IdempotencyLayer::new(pool.clone()))
        .service_fn(|request: TxDelivery| async move {
            let mut conn = request.tx().lock().await;
            sqlx::query("INSERT INTO effects (message_id, traceparent) VALUES ($1, $2)")
                .bind(request.delivery.message.id)
                .bind(request.delivery.message.headers.get(TRACEPARENT))
                .execute(&mut *conn)
                .await?;
            Ok::<_, BoxError>(())
        });
    let consumer = Consumer::builder(broker.clone(), handler)
        .concurrency(4)
        .build();
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));

    // The application: one committed transaction with three messages, one rolled back.
    let messages: Vec<Message> = (0..3)
        .map(|n| Message::new("orders", format!("{n}")))
        .collect();
    let mut tx = pool.begin().await.unwrap();
    Outbox::new()
        .enqueue_batch(&mut *tx, &messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut rolled_back = pool.begin().await.unwrap();
    Outbox::new()
        .enqueue(&mut *rolled_back, &Message::new("orders", "never"))
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    broker.wait_until(|b| b.acked().len() == 3).await;
    // The broker delivers the first message again (a redelivery after a lost ack).
    broker.push(messages[0].clone());
    broker.wait_until(|b| b.acked().len() == 4).await;
    shutdown.cancel();
    consuming.await.unwrap();
    tokio::time::timeout(PATIENCE, relaying)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let rows: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT message_id, traceparent FROM effects ORDER BY message_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut expected: Vec<uuid::Uuid> = messages.iter().map(|m| m.id).collect();
    expected.sort();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), expected);
    assert!(
        rows.iter().all(|r| r.1.is_some()),
        "trace context travelled"
    );
    assert!(broker.dead_letters().is_empty());
}
