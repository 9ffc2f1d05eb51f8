//! `RabbitMqPublisher` as a batch publisher against the broker on AMQP_URL: pipelined confirms
//! on one channel, and a returned (unroutable) or nacked message failing only itself and the
//! later messages of its key.

mod rabbitmq_support;

use std::collections::BTreeSet;

use courier_core::Message;
use courier_core::batch::NotAttempted;
use courier_middleware::lapin::options::{QueueBindOptions, QueueDeclareOptions};
use courier_middleware::lapin::types::{AMQPValue, FieldTable};
use courier_middleware::{QueueSpec, RabbitMqError, RabbitMqPublisher, RabbitMqTopology};
use courier_outbox::PublishBatch;
use rabbitmq_support::{Admin, amqp_url, unique};
use tower::BoxError;

fn rabbit_error(error: &BoxError) -> &RabbitMqError {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<RabbitMqError>() {
            return found;
        }
        next = error.source();
    }
    panic!("not a RabbitMqError: {error}")
}

fn not_attempted(outcome: &Result<(), BoxError>) -> bool {
    matches!(outcome, Err(e) if NotAttempted::is_not_attempted(e.as_ref()))
}

#[tokio::test]
async fn a_returned_message_in_a_batch_fails_alone_and_holds_its_key() {
    let admin = Admin::connect().await;
    let good = unique("batch-good-x");
    let queue = unique("batch-good-q");
    let bad = unique("batch-unbound-x");
    admin.owns_exchange(&good);
    admin.owns_exchange(&bad);
    admin.owns_queue(&queue);
    RabbitMqTopology::new()
        .exchange(&good)
        .exchange(&bad)
        .queue(QueueSpec::new(&queue))
        .bind(&queue, &good, "#")
        .declare_on(admin.connection())
        .await
        .unwrap();
    // 150 keys: every third one's first message goes to the exchange nothing is bound to, and
    // each key has a second, routable message after it.
    let mut batch = Vec::new();
    for n in 0..150 {
        let first = if n % 3 == 0 { &bad } else { &good };
        batch.push(Message::new(first, format!("{n}-1")).with_key(format!("k{n}")));
    }
    for n in 0..150 {
        batch.push(Message::new(&good, format!("{n}-2")).with_key(format!("k{n}")));
    }
    let mut publisher = RabbitMqPublisher::connect(amqp_url()).await.unwrap();
    let outcomes = publisher.publish_batch(batch.clone()).await;

    let mut confirmed = BTreeSet::new();
    for (index, (message, outcome)) in batch.iter().zip(&outcomes).enumerate() {
        let n = index % 150;
        let head_unroutable = n % 3 == 0;
        match (index < 150, head_unroutable) {
            (true, true) => match rabbit_error(outcome.as_ref().unwrap_err()) {
                RabbitMqError::Unroutable { message_id, .. } => assert_eq!(*message_id, message.id),
                other => panic!("message {index}: expected Unroutable, got {other}"),
            },
            (false, true) => assert!(not_attempted(outcome), "message {index}: {outcome:?}"),
            _ => {
                assert!(outcome.is_ok(), "message {index}: {outcome:?}");
                confirmed.insert(message.id.to_string());
            }
        }
    }
    let stored: BTreeSet<String> = admin
        .drain_at_least(&queue, confirmed.len())
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        stored, confirmed,
        "the queue holds exactly the confirmed messages"
    );
    admin.cleanup().await;
}

#[tokio::test]
async fn a_nacked_message_in_a_batch_fails_alone() {
    let admin = Admin::connect().await;
    let exchange = unique("batch-full-x");
    let queue = unique("batch-full-q");
    admin.owns_exchange(&exchange);
    admin.owns_queue(&queue);
    RabbitMqTopology::new()
        .exchange(&exchange)
        .declare_on(admin.connection())
        .await
        .unwrap();
    // A queue that holds 3 messages and nacks every publish beyond them.
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(3));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let channel = admin.channel().await;
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            &queue,
            &exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let batch: Vec<Message> = (0..8)
        .map(|n| Message::new(&exchange, format!("{n}")).with_key(format!("k{n}")))
        .collect();
    let mut publisher = RabbitMqPublisher::connect(amqp_url()).await.unwrap();
    let outcomes = publisher.publish_batch(batch.clone()).await;
    let mut confirmed = BTreeSet::new();
    let mut nacked = 0;
    for (message, outcome) in batch.iter().zip(&outcomes) {
        match outcome {
            Ok(()) => {
                confirmed.insert(message.id.to_string());
            }
            Err(error) => match rabbit_error(error) {
                RabbitMqError::Nacked { message_id } => {
                    assert_eq!(*message_id, message.id);
                    nacked += 1;
                }
                other => panic!("expected Nacked, got {other}"),
            },
        }
    }
    assert_eq!((confirmed.len(), nacked), (3, 5), "{outcomes:?}");
    let stored: BTreeSet<String> = admin
        .drain_at_least(&queue, 3)
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(stored, confirmed);
    admin.cleanup().await;
}
