//! The RabbitMQ delivery source against the broker on AMQP_URL: manual acks, prefetch bound,
//! redelivery through delay queues, dead letters, the runtime on top.

mod rabbitmq_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier_core::Message;
use courier_middleware::lapin::types::AMQPValue;
use courier_middleware::{
    Consumer, Delivery, DeliverySource, NackOutcome, Pulled, RABBITMQ_DEAD_LETTER_REASON_HEADER,
    RabbitMqPublisher, RabbitMqReceipt, RabbitMqSource, RabbitMqSourceConfig, Retry,
};
use rabbitmq_support::{Admin, PATIENCE, amqp_url, unique};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A source on a fresh queue bound to a fresh exchange, with short delay levels, and a publisher.
async fn setup(
    admin: &Admin,
    name: &str,
    config: impl FnOnce(RabbitMqSourceConfig) -> RabbitMqSourceConfig,
) -> (RabbitMqSource, RabbitMqPublisher, String) {
    let exchange = unique(&format!("{name}-x"));
    let config = config(
        RabbitMqSourceConfig::new(unique(name))
            .bind(&exchange, "#")
            .delay_levels([Duration::from_millis(200), Duration::from_millis(400)]),
    );
    admin.owns(&config);
    let source = RabbitMqSource::connect(amqp_url(), config).await.unwrap();
    let publisher = RabbitMqPublisher::connect(amqp_url()).await.unwrap();
    (source, publisher, exchange)
}

async fn publish(publisher: &RabbitMqPublisher, exchange: &str, n: usize) -> Vec<Message> {
    let mut sent = Vec::new();
    for i in 0..n {
        let message = Message::new(exchange, format!("{i}"));
        publisher.clone().oneshot(message.clone()).await.unwrap();
        sent.push(message);
    }
    sent
}

/// Pulls until `n` deliveries arrived.
async fn pull_n(source: &RabbitMqSource, n: usize) -> Vec<Pulled<RabbitMqReceipt>> {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while out.len() < n {
            out.extend(
                source
                    .pull(n - out.len(), Duration::from_secs(1))
                    .await
                    .unwrap(),
            );
        }
    })
    .await
    .unwrap_or_else(|_| panic!("got {} of {n} deliveries", out.len()));
    out
}

#[tokio::test]
async fn a_delivery_maps_back_to_the_envelope_and_an_ack_removes_it() {
    let admin = Admin::connect().await;
    let (source, publisher, exchange) = setup(&admin, "ack", |c| c).await;
    let message = Message::new(&exchange, "{}")
        .with_key("order-1")
        .with_tag("created")
        .with_header("traceparent", "00-abc-def-01");
    publisher.clone().oneshot(message.clone()).await.unwrap();
    let mut pulled = pull_n(&source, 1).await;
    let Pulled {
        delivery, receipt, ..
    } = pulled.remove(0);
    assert_eq!(delivery.message.id, message.id);
    assert_eq!(delivery.message.topic, message.topic);
    assert_eq!(delivery.message.key, message.key);
    assert_eq!(delivery.message.tag, message.tag);
    assert_eq!(delivery.message.headers, message.headers);
    assert_eq!(delivery.message.created_at, message.created_at);
    assert_eq!(delivery.attempt, 1);
    assert_eq!(delivery.group, source.config().queue());
    source.ack(receipt).await.unwrap();
    source.close().await;
    // Acked: nothing comes back once the consumer is gone.
    assert_eq!(admin.ready(source.config().queue()).await, 0);
    admin.cleanup().await;
}

#[tokio::test]
async fn a_nack_with_delay_redelivers_through_the_delay_queue() {
    let admin = Admin::connect().await;
    let (source, publisher, exchange) = setup(&admin, "delay", |c| c).await;
    let sent = publish(&publisher, &exchange, 1).await;
    let first = pull_n(&source, 1).await.remove(0);
    let outcome = source
        .nack(first.receipt, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(outcome, NackOutcome::Redelivered);
    let again = pull_n(&source, 1).await.remove(0);
    assert_eq!(again.delivery.message.id, sent[0].id);
    assert_eq!(again.delivery.attempt, 2);
    assert_eq!(again.delivery.message.payload, sent[0].payload);
    // Without a delay: the schedule (level 2 after the second failure), attempt 3.
    source.nack(again.receipt, None).await.unwrap();
    let third = pull_n(&source, 1).await.remove(0);
    assert_eq!(
        (third.delivery.message.id, third.delivery.attempt),
        (sent[0].id, 3)
    );
    // A zero delay requeues at once; the quorum queue's delivery count carries the attempt.
    source
        .nack(third.receipt, Some(Duration::ZERO))
        .await
        .unwrap();
    let fourth = pull_n(&source, 1).await.remove(0);
    assert_eq!(
        (fourth.delivery.message.id, fourth.delivery.attempt),
        (sent[0].id, 4)
    );
    source.ack(fourth.receipt).await.unwrap();
    source.close().await;
    admin.cleanup().await;
}

#[tokio::test]
async fn dead_letter_moves_the_message_with_its_reason_and_the_last_nack_dead_letters() {
    let admin = Admin::connect().await;
    let (source, publisher, exchange) = setup(&admin, "dlq", |c| c.max_deliveries(2)).await;
    let sent = publish(&publisher, &exchange, 2).await;
    let pulled = pull_n(&source, 2).await;
    let mut by_id: Vec<_> = pulled.into_iter().collect();
    by_id.sort_by_key(|p| p.delivery.message.payload.clone());
    let mut pulled = by_id.into_iter();
    let rejected = pulled.next().unwrap();
    let failing = pulled.next().unwrap();
    source
        .dead_letter(rejected.receipt, "not valid JSON".into())
        .await
        .unwrap();
    assert_eq!(
        source.nack(failing.receipt, None).await.unwrap(),
        NackOutcome::Redelivered
    );
    let last = pull_n(&source, 1).await.remove(0);
    assert_eq!(
        (last.delivery.message.id, last.delivery.attempt),
        (sent[1].id, 2)
    );
    assert_eq!(
        source.nack(last.receipt, None).await.unwrap(),
        NackOutcome::DeadLettered,
        "the second of two deliveries failed"
    );

    let dead = admin
        .drain_at_least(&source.config().dead_letter_queue(), 2)
        .await;
    let ids: Vec<String> = dead
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids, [sent[0].id.to_string(), sent[1].id.to_string()]);
    let reason = dead[0]
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get(RABBITMQ_DEAD_LETTER_REASON_HEADER)
        .cloned();
    assert_eq!(reason, Some(AMQPValue::LongString("not valid JSON".into())));
    source.close().await;
    assert_eq!(admin.ready(source.config().queue()).await, 0);
    admin.cleanup().await;
}

#[tokio::test]
async fn no_more_than_the_prefetch_is_delivered_unacked() {
    let admin = Admin::connect().await;
    let (source, publisher, exchange) = setup(&admin, "prefetch", |c| c.prefetch(3)).await;
    publish(&publisher, &exchange, 8).await;
    let held = pull_n(&source, 3).await;
    let queue = source.config().queue().to_owned();
    // The other five stay in the queue until an ack makes room.
    tokio::time::timeout(PATIENCE, async {
        while admin.ready(&queue).await != 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("five messages stay ready");
    let extra = source.pull(10, Duration::from_millis(300)).await.unwrap();
    assert!(
        extra.is_empty(),
        "{} deliveries beyond the prefetch",
        extra.len()
    );
    let mut held = held.into_iter();
    source.ack(held.next().unwrap().receipt).await.unwrap();
    let next = pull_n(&source, 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!(admin.ready(&queue).await, 4);
    source.close().await;
    admin.cleanup().await;
}

#[tokio::test]
async fn the_runtime_retries_with_delay_and_acks_after_success() {
    let admin = Admin::connect().await;
    let (source, publisher, exchange) = setup(&admin, "runtime", |c| c).await;
    let sent = publish(&publisher, &exchange, 5).await;
    let queue = source.config().queue().to_owned();
    let calls = Arc::new(AtomicU32::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (calls, done) = (calls.clone(), done.clone());
        tower::service_fn(move |delivery: Delivery| {
            let (calls, done) = (calls.clone(), done.clone());
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if delivery.attempt == 1 {
                    return Err(
                        Retry::after(Duration::from_millis(200), "first attempt fails").into(),
                    );
                }
                if n == 10 {
                    done.notify_one();
                }
                Ok::<_, tower::BoxError>(())
            }
        })
    };
    let shutdown = CancellationToken::new();
    let consumer = Consumer::builder(source, handler).concurrency(4).build();
    let running = tokio::spawn(consumer.run(shutdown.clone()));
    tokio::time::timeout(PATIENCE, done.notified())
        .await
        .expect("every message handled twice");
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2 * sent.len() as u32);
    assert_eq!(admin.ready(&queue).await, 0);
    admin.cleanup().await;
}
