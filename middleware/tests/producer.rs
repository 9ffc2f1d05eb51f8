//! Producer stack against real Postgres: the failure-table fallback (safeguard P6).

use std::time::Duration;

use courier_middleware::{
    FailureFallbackLayer, Parked, Producer, RequireSendOkLayer, SendRetryLayer, SendStatus,
    SendTimeoutLayer,
};
use courier_outbox::{Backoff, FailureFilter, Failures, Message, Outbox};
use sqlx::PgPool;
use tower::{BoxError, ServiceBuilder};

courier_test_support::postgres_for_tests!();

fn no_wait() -> Backoff {
    Backoff {
        base: Duration::ZERO,
        factor: 1.0,
        max: Duration::ZERO,
        jitter: 0.0,
    }
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_send_that_fails_its_last_attempt_is_kept_in_the_failure_table(pool: PgPool) {
    let broker =
        tower::service_fn(|_: Message| async { Ok::<_, BoxError>(SendStatus::FlushSlaveTimeout) });
    let producer = Producer::new(
        ServiceBuilder::new()
            .layer(FailureFallbackLayer::new(pool.clone()))
            .layer(SendRetryLayer::default().backoff(no_wait()))
            .layer(SendTimeoutLayer::default())
            .layer(RequireSendOkLayer::new())
            .service(broker),
    );
    let message = Message::new("payments", "p")
        .with_key("order-1")
        .with_header("h", "v");

    let error = producer.send(message.clone()).await.unwrap_err();
    let parked = error
        .downcast_ref::<Parked>()
        .expect("the message was parked");
    assert_eq!(parked.id(), message.id);

    let failed = Failures::new()
        .list(&pool, &FailureFilter::all())
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].message.id, message.id);
    assert_eq!(failed[0].message.headers["h"], "v");
    assert_eq!(failed[0].message.attempts, 3);
    assert!(
        failed[0].last_error.contains("FLUSH_SLAVE_TIMEOUT"),
        "{}",
        failed[0].last_error
    );

    // Replay puts it in the outbox, after what is already there, for the relay to send.
    Outbox::new()
        .enqueue(&pool, &Message::new("payments", "earlier"))
        .await
        .unwrap();
    assert!(Failures::new().replay_one(&pool, message.id).await.unwrap());
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT convert_from(payload, 'UTF8') FROM outbox.messages ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(order, vec!["earlier", "p"]);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_successful_send_writes_nothing(pool: PgPool) {
    let broker = tower::service_fn(|_: Message| async { Ok::<_, BoxError>(SendStatus::SendOk) });
    let producer = Producer::new(
        ServiceBuilder::new()
            .layer(FailureFallbackLayer::new(pool.clone()))
            .layer(RequireSendOkLayer::new())
            .service(broker),
    );
    assert_eq!(
        producer.send(Message::new("payments", "p")).await.unwrap(),
        SendStatus::SendOk
    );
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.failures")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failures, 0);
}
