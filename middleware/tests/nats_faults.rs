//! The outbox relay on Postgres publishing to a nats-server that is killed with SIGKILL and
//! restarted: while it is down the publisher fails (it never reports success) and the relay pauses
//! without counting attempts; once it is back the backlog goes out, each message stored once, and
//! a consumer that lived through the outage receives it.

#[path = "nats_support/mod.rs"]
mod nats_support;

use std::time::Duration;

use courier_middleware::nats::{NatsPublisher, NatsSource, NatsSourceConfig, StreamSpec};
use courier_middleware::{Consumer, Delivery, DeliverySource};
use courier_outbox::{Backoff, CircuitState, Message, Outbox, Relay, Unavailable};
use nats_support::NatsServer;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

courier_test_support::postgres_for_tests!();

const PATIENCE: Duration = Duration::from_secs(30);

async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_circuit(circuit: &mut watch::Receiver<CircuitState>, wanted: CircuitState) {
    tokio::time::timeout(PATIENCE, circuit.wait_for(|state| *state == wanted))
        .await
        .unwrap_or_else(|_| panic!("the circuit never became {wanted:?}"))
        .unwrap();
}

/// (attempts, sent) of every outbox row, in sequence order.
async fn rows(pool: &PgPool) -> Vec<(i32, bool)> {
    sqlx::query_as("SELECT attempts, sent_at IS NOT NULL FROM outbox.messages ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_publish_to_a_killed_server_fails_as_unavailable_never_as_success() {
    let mut server = NatsServer::start();
    let jetstream = server.ready().await;
    StreamSpec::new("FAULTS", ["faults.>"])
        .ensure(&jetstream)
        .await
        .unwrap();
    let publisher = NatsPublisher::connect(&server.url())
        .await
        .unwrap()
        .with_ack_timeout(Duration::from_millis(500));
    let sent = publisher
        .clone()
        .oneshot(Message::new("faults.x", "up"))
        .await
        .unwrap();
    assert!(!sent.duplicate);

    server.kill();
    let error = publisher
        .clone()
        .oneshot(Message::new("faults.x", "down"))
        .await
        .expect_err("a publish to a dead server succeeded");
    assert!(Unavailable::is_unavailable(error.as_ref()), "{error}");

    // No stream for the subject: nobody would store it; the relay waits for an operator.
    server.restart().await;
    let error = publisher
        .oneshot(Message::new("nowhere.x", "no stream"))
        .await
        .expect_err("a publish nobody stores succeeded");
    assert!(Unavailable::is_unavailable(error.as_ref()), "{error}");
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_killed_server_pauses_the_relay_and_the_backlog_reaches_a_consumer_that_lived_through_it(
    pool: PgPool,
) {
    let mut server = NatsServer::start();
    let jetstream = server.ready().await;
    StreamSpec::new("ORDERS", ["orders.>"])
        .ensure(&jetstream)
        .await
        .unwrap();
    let source = NatsSource::new(
        jetstream.clone(),
        NatsSourceConfig::new("ORDERS", "billing").ack_wait(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    assert!(source.redelivery_horizon().is_some());
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = received.clone();
    let handler = tower::service_fn(move |delivery: Delivery| {
        seen.lock().unwrap().push(delivery.message.id);
        async { Ok::<_, tower::BoxError>(()) }
    });
    let shutdown = CancellationToken::new();
    let consuming = tokio::spawn(
        Consumer::builder(source, handler)
            .poll_wait(Duration::from_millis(200))
            .build()
            .run(shutdown.clone()),
    );

    let publisher = NatsPublisher::connect(&server.url())
        .await
        .unwrap()
        .with_ack_timeout(Duration::from_millis(500));
    let hour = Duration::from_secs(3600);
    let relay = Relay::builder(pool.clone(), publisher)
        .max_attempts(1)
        .backoff(Backoff {
            base: hour,
            factor: 1.0,
            max: hour,
            jitter: 0.0,
        })
        .retention(hour)
        .build()
        .unwrap();
    let mut circuit = relay.circuit();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));

    let outbox = Outbox::new();
    let before = Message::new("orders.created", "before the outage");
    outbox.enqueue(&pool, &before).await.unwrap();
    eventually("the first message published", || async {
        rows(&pool).await == [(1, true)]
    })
    .await;

    server.kill();
    let during: Vec<Message> = (0..10)
        .map(|i| {
            Message::new("orders.created", format!("during {i}"))
                .with_key(format!("order-{}", i % 3))
        })
        .collect();
    outbox.enqueue_batch(&pool, &during).await.unwrap();
    wait_for_circuit(&mut circuit, CircuitState::Open).await;
    let pending: Vec<(i32, bool)> = rows(&pool).await.into_iter().filter(|r| !r.1).collect();
    assert_eq!(
        pending,
        vec![(0, false); during.len()],
        "the outage counted attempts or lost rows"
    );

    server.restart().await;
    wait_for_circuit(&mut circuit, CircuitState::Closed).await;
    eventually("the backlog published", || async {
        rows(&pool).await.iter().all(|&(_, sent)| sent)
    })
    .await;
    let all: Vec<_> = std::iter::once(&before)
        .chain(&during)
        .map(|m| m.id)
        .collect();
    eventually("every message consumed", || async {
        let got = received.lock().unwrap().clone();
        all.iter().all(|id| got.contains(id))
    })
    .await;
    // Probes sent while the server was down may reach it after the restart: stored once anyway.
    let mut stream = jetstream.get_stream("ORDERS").await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored, all.len() as u64, "each message stored once");

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, relaying)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(PATIENCE, consuming)
        .await
        .unwrap()
        .unwrap();
}
