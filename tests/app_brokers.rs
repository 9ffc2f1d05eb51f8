//! `courier::App` on NATS JetStream (`NATS_URL`) and RabbitMQ (`AMQP_URL`) by changing only the
//! broker address: its relay publishes each claimed batch through the broker's batch publisher
//! (pipelined PubAcks / confirms) and its idempotent consumer handles each message once. Each run
//! uses a topic and group of its own and removes what it provisioned at the end. Needs courier's
//! `nats` and `rabbitmq` features (a workspace run has them, through courier-quickstart):
//! `cargo nextest run -p courier --features nats,rabbitmq --test app_brokers`.

#![cfg(all(feature = "nats", feature = "rabbitmq"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier::middleware::{BrokerAddress, Subscription};
use courier::outbox::{Message, Outbox};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

courier_test_support::postgres_for_tests!();

/// How long the test waits for the consumer; never asserted on.
const PATIENCE: Duration = Duration::from_secs(60);

fn address(variable: &str, local: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| local.to_owned())
}

/// Five orders written through the outbox reach the handler once each; the first attempt of one
/// fails and is redelivered by the broker.
async fn relays_and_consumes_each_message_once(pool: PgPool, broker: String) {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let (topic, group) = (format!("APP_ORDERS_{run}"), format!("app-payments-{run}"));
    // The stream / queues exist before the relay's first publish, so that no publish is refused
    // as unroutable and left to the relay's retry backoff (the App's consumer would create them
    // too, but concurrently with the relay).
    let address: BrokerAddress = broker.parse().unwrap();
    let subscription = Subscription::new(&topic, &group);
    drop(address.subscribe(&subscription).await.unwrap());

    let calls = Arc::new(AtomicU32::new(0));
    let failed_once = Arc::new(AtomicU32::new(0));
    let done = CancellationToken::new();
    let app = {
        let (calls, failed_once, done) = (calls.clone(), failed_once.clone(), done.clone());
        courier::App::builder(pool.clone(), broker.clone()).consume(
            &group,
            &topic,
            move |request| {
                let (calls, failed_once, done) = (calls.clone(), failed_once.clone(), done.clone());
                async move {
                    if request.delivery.message.key.as_deref() == Some("order-2")
                        && failed_once.fetch_add(1, Ordering::SeqCst) == 0
                    {
                        return Err("the payment gateway timed out".into());
                    }
                    if calls.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
                        done.cancel();
                    }
                    Ok(())
                }
            },
        )
    };
    let running = tokio::spawn(app.build().run(done.clone()));

    let messages: Vec<Message> = (1..=5)
        .map(|n| Message::new(&topic, format!("order {n}")).with_key(format!("order-{n}")))
        .collect();
    Outbox::new().enqueue_batch(&pool, &messages).await.unwrap();

    let stopped = tokio::time::timeout(PATIENCE, running).await;
    let removed = address.remove_provisioned(&subscription).await;
    stopped
        .expect("the app handles the five orders")
        .unwrap()
        .unwrap();
    removed.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(failed_once.load(Ordering::SeqCst), 2, "order-2 ran twice");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the relay published every message");
}

#[sqlx::test(migrator = "courier::outbox::MIGRATOR")]
async fn the_app_runs_on_nats_by_changing_only_the_address(pool: PgPool) {
    let broker = address("NATS_URL", "nats://127.0.0.1:4222");
    relays_and_consumes_each_message_once(pool, broker).await;
}

#[sqlx::test(migrator = "courier::outbox::MIGRATOR")]
async fn the_app_runs_on_rabbitmq_by_changing_only_the_address(pool: PgPool) {
    let broker = address("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    relays_and_consumes_each_message_once(pool, broker).await;
}
