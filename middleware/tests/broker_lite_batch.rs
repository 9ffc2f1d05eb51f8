//! The relay publishing to broker-lite in batches (`Relay::batch_builder`): one claimed batch is
//! one `SEND_BATCH` request, counted by the broker's own request counter; a batch the broker
//! refuses (a message too large, a topic it does not know) fails only the refused message.
//!
//! The counter is read through a process-wide metrics recorder, so this binary holds a single
//! test that sends anything through the broker.

mod broker_lite_support;

use broker_lite::client::ProducerConfig;
use broker_lite_support::{PATIENCE, eventually, start_broker};
use courier_core::Permanent;
use courier_middleware::BrokerLitePublisher;
use courier_outbox::{Message, Outbox, PublishBatch, Relay, RelayState};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

courier_test_support::postgres_for_tests!();

const SEND_BATCH: &str = "broker_lite_server_requests_total{command=send_batch}";
const SEND: &str = "broker_lite_server_requests_total{command=send}";

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_relay_batch_is_one_request_and_a_refused_message_fails_alone(pool: PgPool) {
    let counters = courier_test_support::counters();
    let env = start_broker(|_| {}).await;
    let publisher = BrokerLitePublisher::connect(env.broker.addr(), ProducerConfig::default())
        .await
        .unwrap();

    // The backlog is in the outbox before the relay starts, so its first claim takes all of it.
    let messages: Vec<Message> = (0..300)
        .map(|i| Message::new("orders", format!("order {i}")).with_key(format!("order-{}", i % 40)))
        .collect();
    Outbox::new().enqueue_batch(&pool, &messages).await.unwrap();
    let relay = Relay::batch_builder(pool.clone(), publisher.clone())
        .batch_size(500)
        .build()
        .unwrap();
    let mut state = relay.state();
    let shutdown = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(shutdown.clone()));
    eventually("the backlog published", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
            .fetch_one(&pool)
            .await
            .unwrap();
        left == 0
    })
    .await;
    tokio::time::timeout(PATIENCE, state.wait_for(|s| *s == RelayState::Idle))
        .await
        .unwrap()
        .unwrap();
    shutdown.cancel();
    relaying.await.unwrap().unwrap();
    assert_eq!(
        counters.get(SEND_BATCH),
        1,
        "one claimed batch, one request"
    );
    assert_eq!(counters.get(SEND), 0, "no message went on its own");
    for message in &messages {
        let stored = env.broker.broker().trace(message.id);
        assert!(
            !stored.is_empty(),
            "message {} is not on the broker",
            message.id
        );
    }

    // One message over the broker's size limit: the broker refuses the whole request, the
    // publisher sends the messages again one by one, and only the large one fails, for good.
    let mut publisher = publisher;
    let batch = vec![
        Message::new("orders", "small 1").with_key("a"),
        Message::new("orders", vec![b'x'; 64 * 1024]).with_key("b"),
        Message::new("orders", "small 2").with_key("c"),
    ];
    let outcomes = publisher.publish_batch(batch.clone()).await;
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    let refused = outcomes[1].as_ref().unwrap_err();
    assert!(Permanent::is_permanent(refused.as_ref()), "{refused}");
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    assert_eq!(counters.get(SEND_BATCH), 2);
    assert_eq!(
        counters.get(SEND),
        3,
        "the refused batch went again message by message"
    );
    assert!(env.broker.broker().trace(batch[1].id).is_empty());
    assert!(!env.broker.broker().trace(batch[2].id).is_empty());

    // One message for a topic the broker does not know (and will not create): the broker refuses
    // the whole request; the good messages around it are stored, and only that one fails.
    let strict = start_broker(|config| config.broker.auto_create_topics = false).await;
    strict
        .broker
        .broker()
        .create_topic("orders", 4)
        .await
        .unwrap();
    let mut publisher =
        BrokerLitePublisher::connect(strict.broker.addr(), ProducerConfig::default())
            .await
            .unwrap();
    let batch = vec![
        Message::new("orders", "order 1").with_key("a"),
        Message::new("invoices", "invoice 1").with_key("b"),
        Message::new("orders", "order 2").with_key("c"),
    ];
    let outcomes = publisher.publish_batch(batch.clone()).await;
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    let unknown = outcomes[1].as_ref().unwrap_err().to_string();
    assert!(unknown.contains("invoices"), "{unknown}");
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    assert!(!strict.broker.broker().trace(batch[0].id).is_empty());
    assert!(!strict.broker.broker().trace(batch[2].id).is_empty());
}
