//! `courier::App`'s relay hands each claimed batch to broker-lite in one `SEND_BATCH` request (one
//! group commit), as the `outbox-relay` sidecar does, not one `SEND` per message. Counted with the
//! embedded broker's own request counter, read from this test binary's counting recorder (courier-test-support) (the
//! only test in the binary, so the counts are this test's).

use std::time::Duration;

use broker_lite::embedded::{self, EmbeddedConfig};
use courier::outbox::{Message, Outbox};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

courier_test_support::postgres_for_tests!();

#[sqlx::test(migrator = "courier::outbox::MIGRATOR")]
async fn the_apps_relay_publishes_a_claimed_batch_in_one_request(pool: PgPool) {
    let counters = courier_test_support::counters();
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    broker.broker().create_topic("orders", 4).await.unwrap();

    // The backlog is in the outbox before the app starts, so the relay's claims take whole batches.
    let messages: Vec<Message> = (0..200)
        .map(|i| Message::new("orders", format!("order {i}")).with_key(format!("order-{}", i % 20)))
        .collect();
    Outbox::new().enqueue_batch(&pool, &messages).await.unwrap();

    let shutdown = CancellationToken::new();
    let app = courier::App::builder(pool.clone(), broker.addr().to_string()).build();
    let running = tokio::spawn(app.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && !running.is_finished(),
            "the app's relay left {left} of 200 messages in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();

    for message in &messages {
        assert!(
            !broker.broker().trace(message.id).is_empty(),
            "message {} is not on the broker",
            message.id
        );
    }
    assert!(
        counters.broker_requests("send_batch") >= 1,
        "no SEND_BATCH request reached the broker:\n{counters:?}"
    );
    assert_eq!(
        counters.broker_requests("send"),
        0,
        "messages went one by one instead of in the claimed batch"
    );
    broker.shutdown().await.unwrap();
}
