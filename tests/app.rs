//! `courier::App`, the short path: migrations, relay and an idempotent consumer from one builder,
//! against an embedded broker-lite, on Postgres and on SQLite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier::outbox::{Message, Outbox, Store};
use courier_middleware::TxDatabase;
use sqlx::{Database, Pool};
use tokio_util::sync::CancellationToken;

courier_test_support::postgres_for_tests!();

/// How long the test waits for the consumer; never asserted on.
const PATIENCE: Duration = Duration::from_secs(60);

/// Three orders written through the outbox reach the handler once each; the first attempt of one
/// of them fails and is redelivered; the app stops on its shutdown token.
async fn relays_and_consumes_each_message_once<DB>(pool: Pool<DB>, begin: &'static str)
where
    DB: Store + TxDatabase,
    <DB as Database>::Connection: sqlx::migrate::Migrate,
    for<'c> &'c mut <DB as Database>::Connection: sqlx::Executor<'c, Database = DB>,
{
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker_lite::embedded::EmbeddedConfig::default();
    config.broker.delay_levels = vec![Duration::from_millis(50)];
    config.broker.first_retry_level = 1;
    let broker = broker_lite::embedded::start(dir.path(), config)
        .await
        .unwrap();
    courier::outbox::migrate(&pool).await.unwrap();

    let calls = Arc::new(AtomicU32::new(0));
    let failed_once = Arc::new(AtomicU32::new(0));
    let done = CancellationToken::new();
    let app = {
        let (calls, failed_once, done) = (calls.clone(), failed_once.clone(), done.clone());
        courier::App::builder(pool.clone(), broker.addr().to_string()).consume(
            "payments",
            "ORDER_CREATED",
            move |request| {
                let (calls, failed_once, done) = (calls.clone(), failed_once.clone(), done.clone());
                async move {
                    if request.delivery.message.key.as_deref() == Some("order-2")
                        && failed_once.fetch_add(1, Ordering::SeqCst) == 0
                    {
                        return Err("the payment gateway timed out".into());
                    }
                    if calls.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                        done.cancel();
                    }
                    Ok(())
                }
            },
        )
    };
    let running = tokio::spawn(app.build().run(done.clone()));

    let mut tx = pool.begin_with(begin).await.unwrap();
    for order in ["order-1", "order-2", "order-3"] {
        let message = Message::new("ORDER_CREATED", order).with_key(order);
        Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
    }
    tx.commit().await.unwrap();

    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the app handles the three orders")
        .unwrap()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(failed_once.load(Ordering::SeqCst), 2, "order-2 ran twice");
    broker.shutdown().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn postgres(pool: sqlx::PgPool) {
    relays_and_consumes_each_message_once(pool, "BEGIN").await;
}

#[sqlx::test(migrations = false)]
async fn sqlite(pool: sqlx::SqlitePool) {
    relays_and_consumes_each_message_once(pool, "BEGIN IMMEDIATE").await;
}

/// An unreachable broker is an error that names the address and says what to do.
#[sqlx::test(migrations = false)]
async fn an_unreachable_broker_is_a_clear_error(pool: sqlx::SqlitePool) {
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = courier::App::builder(pool, unused.to_string())
        .build()
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&unused.to_string()) && text.contains("start it"),
        "{text}"
    );
}
