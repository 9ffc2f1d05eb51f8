//! The consumer runtime and the publisher against a real embedded broker-lite (SYNC_FLUSH, on a
//! temporary directory). Broker time moves only through its `ManualClock`: tokio time is never
//! paused, since the broker's store writer is a plain thread.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_lite::broker::{ManualClock, TraceKind};
use broker_lite::client::{ConsumerConfig, ProducerConfig};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::storage::FlushMode;
use courier_middleware::{
    BrokerLitePublisher, BrokerLiteSource, CatchPanicLayer, Consumer, Delivery, DeliverySource,
    IdempotencyLayer, Reject, RequireSendOk, RequireSendOkLayer, Retry, TraceLayer, TxDelivery,
};
use courier_outbox::{Message, Outbox, Permanent, Relay};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

/// How long a test waits for something that should happen in milliseconds.
const PATIENCE: Duration = Duration::from_secs(30);

struct Env {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    broker: EmbeddedBroker,
}

async fn start_broker(tweak: impl FnOnce(&mut EmbeddedConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let mut config = EmbeddedConfig::default();
    config.broker.store.flush_mode = FlushMode::Sync;
    config.broker.store.segment_size = 1 << 20;
    config.broker.store.max_record_size = 64 * 1024;
    config.broker.max_message_size = 32 * 1024;
    config.broker.clock = Arc::new(clock.clone());
    config.broker.background_tasks = false;
    tweak(&mut config);
    let broker = embedded::start(dir.path(), config).await.unwrap();
    Env {
        _dir: dir,
        clock,
        broker,
    }
}

impl Env {
    async fn publisher(&self) -> RequireSendOk<BrokerLitePublisher> {
        let publisher = BrokerLitePublisher::connect(self.broker.addr(), ProducerConfig::default())
            .await
            .unwrap();
        RequireSendOkLayer::new().layer(publisher)
    }

    async fn source(&self, config: ConsumerConfig) -> BrokerLiteSource {
        BrokerLiteSource::connect(self.broker.addr(), config)
            .await
            .unwrap()
            .with_broker_config(self.broker.broker().config())
    }

    async fn publish(&self, message: Message) -> Uuid {
        let id = message.id;
        let sent = self.publisher().await.oneshot(message).await.unwrap();
        assert_eq!(sent.message_id, id, "the envelope id is the broker's id");
        id
    }

    /// How many events of message `id`'s trace match `kind`.
    fn count(&self, id: Uuid, kind: impl Fn(&TraceKind) -> bool) -> usize {
        self.broker
            .broker()
            .trace(id)
            .iter()
            .filter(|e| kind(&e.kind))
            .count()
    }
}

/// Checks `condition` every few milliseconds until it holds; fails the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every call the handler saw: (payload, attempt).
type Calls = Arc<Mutex<Vec<(String, u32)>>>;

/// A handler stack (trace, catch-panic) that records each call and answers what `decide` says.
fn recording<F>(
    calls: &Calls,
    decide: F,
) -> impl Service<Delivery, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
where
    F: Fn(&Delivery) -> Result<(), BoxError> + Clone + Send + Sync + 'static,
{
    let calls = calls.clone();
    ServiceBuilder::new()
        .layer(TraceLayer::new())
        .layer(CatchPanicLayer::new())
        .service_fn(move |delivery: Delivery| {
            let calls = calls.clone();
            let decide = decide.clone();
            async move {
                let payload = String::from_utf8(delivery.message.payload.to_vec()).unwrap();
                calls.lock().unwrap().push((payload, delivery.attempt));
                decide(&delivery)
            }
        })
}

fn run<S, H>(consumer: Consumer<S, H>) -> (CancellationToken, JoinHandle<()>)
where
    S: DeliverySource,
    H: Service<Delivery> + Clone + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    H::Response: Send + 'static,
{
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    (shutdown, running)
}

async fn stop(shutdown: CancellationToken, running: JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the consumer stops")
        .unwrap();
}

fn calls_of(calls: &Calls) -> Vec<(String, u32)> {
    calls.lock().unwrap().clone()
}

#[tokio::test]
async fn a_failed_delivery_is_redelivered_after_the_delay_level_and_then_succeeds() {
    let env = start_broker(|_| {}).await;
    let id = env
        .publish(
            Message::new("orders", "order 7")
                .with_key("order-7")
                .with_header("tenant", "acme"),
        )
        .await;
    let source = env.source(ConsumerConfig::new("billing", "orders")).await;
    let calls = Calls::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        recording(&calls, move |d| {
            seen.lock().unwrap().push(d.clone());
            if d.attempt == 1 {
                Err("the database is down".into())
            } else {
                Ok(())
            }
        })
    };
    let (shutdown, running) = run(Consumer::builder(source, handler)
        .group("billing")
        .poll_wait(Duration::from_millis(200))
        .build());

    eventually("the nack of the first delivery", || async {
        env.count(id, |k| matches!(k, TraceKind::Nacked { .. })) == 1
    })
    .await;
    assert_eq!(calls_of(&calls), [("order 7".to_owned(), 1)]);
    // Level 3 (10 s) is the first redelivery; the broker's clock moves, nobody waits for it.
    env.clock.advance(Duration::from_secs(10));
    eventually("the ack of the redelivery", || async {
        env.count(id, |k| matches!(k, TraceKind::Acked { .. })) == 1
    })
    .await;
    stop(shutdown, running).await;

    assert_eq!(
        calls_of(&calls),
        [("order 7".to_owned(), 1), ("order 7".to_owned(), 2)]
    );
    let seen = seen.lock().unwrap().clone();
    let (first, second) = (&seen[0], &seen[1]);
    assert_eq!(second.message.id, id);
    assert_eq!(second.message.key.as_deref(), Some("order-7"));
    assert_eq!(second.message.headers["tenant"], "acme");
    assert_eq!(second.group, "billing");
    assert!(second.queue.as_deref().unwrap().starts_with("orders:"));
    assert_eq!(first.first_delivered_at, second.first_delivered_at);
    // The stopped runtime dropped its source, which left the group.
    eventually("the member to leave", || async {
        env.broker.broker().groups()[0].members.is_empty()
    })
    .await;
    assert!(
        env.broker
            .broker()
            .dead_letters("billing", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        env.broker
            .broker()
            .lag("billing")
            .unwrap()
            .iter()
            .all(|l| l.lag == 0)
    );
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_is_dead_lettered_after_max_attempts() {
    let env = start_broker(|c| c.broker.max_reconsume_times = 2).await;
    let id = env.publish(Message::new("orders", "poison")).await;
    let source = env.source(ConsumerConfig::new("billing", "orders")).await;
    let calls = Calls::default();
    let handler = recording(&calls, |_| Err("still failing".into()));
    let (shutdown, running) = run(Consumer::builder(source, handler)
        .group("billing")
        .poll_wait(Duration::from_millis(200))
        .build());

    // Two redeliveries allowed by the broker: three deliveries, the third nack dead-letters.
    for round in 1..=3 {
        eventually("the next nack", || async {
            env.count(id, |k| matches!(k, TraceKind::Nacked { .. })) == round
        })
        .await;
        env.clock.advance(Duration::from_secs(60));
    }
    eventually("the dead letter", || async {
        env.count(id, |k| matches!(k, TraceKind::DeadLettered { .. })) == 1
    })
    .await;
    stop(shutdown, running).await;

    assert_eq!(
        calls_of(&calls).iter().map(|c| c.1).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let dead = env
        .broker
        .broker()
        .dead_letters("billing", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, id);
    assert_eq!(dead[0].properties["%RECONSUME_TIMES%"], "2");
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_runtimes_own_limit_dead_letters_through_the_immediate_operation() {
    // The broker would allow 16 redeliveries; the runtime gives up after 2 deliveries.
    let env = start_broker(|_| {}).await;
    let id = env.publish(Message::new("orders", "poison")).await;
    let source = env.source(ConsumerConfig::new("billing", "orders")).await;
    let calls = Calls::default();
    let handler = recording(&calls, |_| Err("still failing".into()));
    let (shutdown, running) = run(Consumer::builder(source, handler)
        .group("billing")
        .max_deliveries(2)
        .poll_wait(Duration::from_millis(200))
        .build());

    eventually("the first nack", || async {
        env.count(id, |k| matches!(k, TraceKind::Nacked { .. })) == 1
    })
    .await;
    env.clock.advance(Duration::from_secs(10));
    eventually("the dead letter", || async {
        env.count(id, |k| matches!(k, TraceKind::DeadLettered { .. })) == 1
    })
    .await;
    stop(shutdown, running).await;

    assert_eq!(
        calls_of(&calls).iter().map(|c| c.1).collect::<Vec<_>>(),
        [1, 2]
    );
    let dead = env
        .broker
        .broker()
        .dead_letters("billing", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].properties["%RECONSUME_TIMES%"], "1");
    assert_eq!(dead[0].properties["%DEAD_LETTER_REASON%"], "still failing");
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rejected_delivery_is_dead_lettered_at_once() {
    let env = start_broker(|_| {}).await;
    let poison = env.publish(Message::new("orders", "not json")).await;
    let fine = env
        .publish(Message::json("orders", &serde_json::json!({"id": 7})).unwrap())
        .await;
    let source = env.source(ConsumerConfig::new("billing", "orders")).await;
    let calls = Calls::default();
    let handler = recording(&calls, |d| {
        d.message
            .payload_json::<serde_json::Value>()
            .map(drop)
            .map_err(|e| Reject::new(e).into())
    });
    let (shutdown, running) = run(Consumer::builder(source, handler)
        .group("billing")
        .poll_wait(Duration::from_millis(200))
        .build());

    eventually("the dead letter and the ack", || async {
        env.count(poison, |k| matches!(k, TraceKind::DeadLettered { .. })) == 1
            && env.count(fine, |k| matches!(k, TraceKind::Acked { .. })) == 1
    })
    .await;
    // Settled for the group: the committed offsets moved past both.
    let lag_settled = || async {
        env.broker
            .broker()
            .lag("billing")
            .unwrap()
            .iter()
            .all(|l| l.lag == 0)
    };
    eventually("the queues to settle", lag_settled).await;
    stop(shutdown, running).await;

    assert_eq!(calls_of(&calls).len(), 2, "each message handled once");
    assert_eq!(
        env.count(poison, |k| matches!(k, TraceKind::Delivered { .. })),
        1,
        "no redelivery before the dead letter"
    );
    assert_eq!(
        env.count(poison, |k| matches!(k, TraceKind::Nacked { .. })),
        0
    );
    let dead = env
        .broker
        .broker()
        .dead_letters("billing", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, poison);
    assert_eq!(dead[0].properties["%RECONSUME_TIMES%"], "0");
    assert!(
        dead[0].properties["%DEAD_LETTER_REASON%"].starts_with("rejected:"),
        "the handler's error is the reason: {:?}",
        dead[0].properties
    );
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn ordered_mode_keeps_the_order_of_a_key_through_a_failure() {
    let env = start_broker(|_| {}).await;
    env.broker.broker().create_topic("seq", 2).await.unwrap();
    let mut publisher = env.publisher().await;
    for i in 0..6 {
        let key = if i % 2 == 0 { "even" } else { "odd" };
        let sent = publisher
            .ready()
            .await
            .unwrap()
            .call(Message::new("seq", format!("{key} {i}")).with_key(key))
            .await
            .unwrap();
        assert!(sent.is_ok());
    }
    let mut config = ConsumerConfig::new("billing", "seq");
    config.ordered = true;
    let source = env.source(config).await;
    let calls = Calls::default();
    // The first delivery of "even 2" fails; it is retried in place before "even 4" may run.
    let handler = recording(&calls, |d| {
        if d.message.payload.as_ref() == b"even 2" && d.attempt == 1 {
            Err(Retry::after(Duration::ZERO, "not yet").into())
        } else {
            Ok(())
        }
    });
    let (shutdown, running) = run(Consumer::builder(source, handler)
        .group("billing")
        .ordered(true)
        .concurrency(4)
        .batch_size(4)
        .poll_wait(Duration::from_millis(200))
        .build());
    let lag_settled = || async {
        let lag = env.broker.broker().lag("billing").unwrap();
        !lag.is_empty() && lag.iter().all(|l| l.lag == 0)
    };
    eventually("every message settled", lag_settled).await;
    stop(shutdown, running).await;

    let calls = calls_of(&calls);
    let of_key = |key: &str| -> Vec<String> {
        calls
            .iter()
            .filter(|(payload, _)| payload.starts_with(key))
            .map(|(payload, _)| payload.clone())
            .collect()
    };
    assert_eq!(of_key("even"), ["even 0", "even 2", "even 2", "even 4"]);
    assert_eq!(of_key("odd"), ["odd 1", "odd 3", "odd 5"]);
    env.broker.shutdown().await.unwrap();
}

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
    // The first message reaches the broker a second time (same id): handled as a duplicate.
    env.publish(messages[0].clone()).await;
    eventually("the duplicate acked", || async {
        acked(messages[0].id) == 2
    })
    .await;

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
    assert!(
        env.broker
            .broker()
            .dead_letters("billing", 10)
            .await
            .unwrap()
            .is_empty()
    );
    env.broker.shutdown().await.unwrap();
}
