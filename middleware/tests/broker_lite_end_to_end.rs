//! The broker-lite publisher, and the whole flow on Postgres: outbox → relay → broker-lite →
//! consumer runtime → idempotent handler.

mod broker_lite_support;

use std::time::Duration;

use broker_lite::broker::TraceKind;
use broker_lite::client::ConsumerConfig;
use broker_lite_support::{PATIENCE, eventually, start_broker};
use courier_middleware::{CatchPanicLayer, Consumer, IdempotencyLayer, TraceLayer, TxDelivery};
use courier_outbox::{Message, Outbox, Permanent, Relay};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

#[tokio::test]
async fn the_publisher_marks_a_message_the_broker_can_never_take_as_permanent() {
    let env = start_broker(|_| {}).await;
    let mut publisher = env.publisher().await;
    let too_large = Message::new("orders", vec![0_u8; 40 * 1024]);
    let error = publisher
        .ready()
        .await
        .unwrap()
        .call(too_large)
        .await
        .unwrap_err();
    assert!(Permanent::is_permanent(error.as_ref()), "{error}");
    let reserved = Message::new("orders", "x").with_header("%ORIGIN_TOPIC%", "forged");
    let error = publisher
        .ready()
        .await
        .unwrap()
        .call(reserved)
        .await
        .unwrap_err();
    assert!(Permanent::is_permanent(error.as_ref()), "{error}");

    // A message the broker takes comes back with its status.
    let sent = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new("orders", "fine"))
        .await
        .unwrap();
    assert!(sent.is_ok());
    env.broker.shutdown().await.unwrap();
}

/// The whole flow on Postgres: outbox → relay → broker-lite → consumer runtime → idempotent
/// handler, with a message published twice (a relay that died before its commit) absorbed.
#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn outbox_to_broker_lite_to_an_idempotent_handler_applies_each_committed_message_once(
    pool: PgPool,
) {
    sqlx::query("CREATE TABLE effects (id bigserial PRIMARY KEY, message_id uuid NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let env = start_broker(|_| {}).await;
    let shutdown = CancellationToken::new();

    let relay = Relay::builder(pool.clone(), env.publisher().await)
        .build()
        .unwrap();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));

    let source = env.source(ConsumerConfig::new("billing", "orders")).await;
    let idempotency = IdempotencyLayer::new(pool.clone());
    assert!(
        idempotency.check_source(&source),
        "the window outlives the redeliveries"
    );
    let handler = ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(CatchPanicLayer::new())
        .layer(idempotency)
        .service_fn(|request: TxDelivery| async move {
            let mut conn = request.tx().lock().await;
            sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
                .bind(request.delivery.message.id)
                .execute(&mut *conn)
                .await?;
            Ok::<_, BoxError>(())
        });
    let consumer = Consumer::builder(source, handler)
        .group("billing")
        .concurrency(4)
        .poll_wait(Duration::from_millis(200))
        .build();
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));

    // The application: one committed transaction with three messages, one rolled back.
    let messages: Vec<Message> = (0..3)
        .map(|n| Message::new("orders", format!("order {n}")).with_key(format!("order-{n}")))
        .collect();
    // Larger than the broker's limit (32 KiB here), within the outbox's: refused for good.
    let too_large = Message::new("orders", vec![b'x'; 40 * 1024]);
    let mut tx = pool.begin().await.unwrap();
    Outbox::new()
        .enqueue_batch(&mut *tx, &messages)
        .await
        .unwrap();
    Outbox::new().enqueue(&mut *tx, &too_large).await.unwrap();
    tx.commit().await.unwrap();
    let never = Message::new("orders", "never");
    let mut rolled_back = pool.begin().await.unwrap();
    Outbox::new()
        .enqueue(&mut *rolled_back, &never)
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();

    let acked = |id: Uuid| env.count(id, |k| matches!(k, TraceKind::Acked { .. }));
    let parked = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox.failures")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 1
    };
    eventually("the three messages acked, the large one parked", || async {
        messages.iter().all(|m| acked(m.id) == 1) && parked().await
    })
    .await;
    // The first message reaches the broker a second time (same id, as from a relay that died
    // before it recorded the publish): the broker answers from the copy it holds and stores
    // nothing new, so the consumer is not handed it again.
    env.publish(messages[0].clone()).await;
    let stored = env.count(messages[0].id, |k| matches!(k, TraceKind::Stored { .. }));
    assert_eq!(stored, 1, "the resent message was stored again");
    assert_eq!(acked(messages[0].id), 1);

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, consuming)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, relaying)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let mut rows: Vec<Uuid> = sqlx::query_scalar("SELECT message_id FROM effects")
        .fetch_all(&pool)
        .await
        .unwrap();
    rows.sort();
    let mut expected: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    expected.sort();
    assert_eq!(rows, expected, "exactly one effect per committed message");
    assert!(
        env.broker
            .broker()
            .lookup(never.id)
            .await
            .unwrap()
            .is_none()
    );
    let outbox_left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outbox_left, 0, "the relay drained the outbox");
    let failed: Vec<(Uuid, i32, String)> =
        sqlx::query_as("SELECT id, attempts, last_error FROM outbox.failures")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, too_large.id);
    assert_eq!(failed[0].1, 1, "moved at once, not retried (permanent)");
    assert!(failed[0].2.contains("exceeds the limit"), "{}", failed[0].2);
    let records: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM courier_inbox.processed WHERE consumer_group = 'billing'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(records, 3);
    assert!(env.dead_letters("billing").await.is_empty());
    env.broker.shutdown().await.unwrap();
}
