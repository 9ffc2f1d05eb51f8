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

/// A batch publisher answering each message by its payload: "slow-disk" never gets `SEND_OK`,
/// "glitch" fails its first call only. Records the payloads of every call.
#[derive(Clone, Default)]
struct StatusBroker {
    calls: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

impl courier_outbox::PublishBatch for StatusBroker {
    type Response = SendStatus;

    fn publish_batch(
        &mut self,
        messages: Vec<Message>,
    ) -> courier_core::batch::BatchFuture<SendStatus> {
        let bodies: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(bodies.clone());
            calls.len() == 1
        };
        Box::pin(async move {
            bodies
                .iter()
                .map(|body| match body.as_str() {
                    "slow-disk" => Ok(SendStatus::FlushDiskTimeout),
                    "glitch" if first => Err("connection reset".into()),
                    _ => Ok(SendStatus::SendOk),
                })
                .collect()
        })
    }
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_batch_through_the_producer_stack_retries_and_parks_only_the_failed(pool: PgPool) {
    use courier_outbox::PublishBatch;
    let broker = StatusBroker::default();
    let mut stack = ServiceBuilder::new()
        .layer(FailureFallbackLayer::new(pool.clone()))
        .layer(SendRetryLayer::default().backoff(no_wait()))
        .layer(SendTimeoutLayer::default())
        .layer(RequireSendOkLayer::new())
        .service(broker.clone());
    let batch = vec![
        Message::new("payments", "ok-1"),
        Message::new("payments", "slow-disk"),
        Message::new("payments", "glitch"),
        Message::new("payments", "ok-2"),
    ];
    let outcomes = stack.publish_batch(batch.clone()).await;

    assert_eq!(*outcomes[0].as_ref().unwrap(), SendStatus::SendOk);
    let parked = outcomes[1].as_ref().unwrap_err();
    assert_eq!(parked.downcast_ref::<Parked>().unwrap().id(), batch[1].id);
    assert_eq!(*outcomes[2].as_ref().unwrap(), SendStatus::SendOk);
    assert_eq!(*outcomes[3].as_ref().unwrap(), SendStatus::SendOk);
    // The status check failed "slow-disk" alone; the retries sent only what had failed.
    let calls = broker.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            vec!["ok-1", "slow-disk", "glitch", "ok-2"],
            vec!["slow-disk", "glitch"],
            vec!["slow-disk"],
        ]
    );
    let failed = Failures::new()
        .list(&pool, &FailureFilter::all())
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].message.id, batch[1].id);
    assert!(
        failed[0].last_error.contains("FLUSH_DISK_TIMEOUT"),
        "{}",
        failed[0].last_error
    );
}
