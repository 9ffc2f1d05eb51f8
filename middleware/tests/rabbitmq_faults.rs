//! RabbitMQ faults: the connection is cut through a TCP proxy in front of the broker. Publishes
//! during the cut fail (none is reported as sent that the queue does not hold), publishing
//! recovers once the broker is reachable again, and unacked deliveries are redelivered.

mod rabbitmq_support;

use std::collections::BTreeSet;
use std::time::Duration;

use courier_core::{Message, Unavailable};
use courier_middleware::{
    DeliverySource, QueueSpec, RabbitMqPublisher, RabbitMqSource, RabbitMqSourceConfig,
    RabbitMqTopology,
};
use rabbitmq_support::{Admin, PATIENCE, Proxy, amqp_url, unique};
use tower::ServiceExt;

#[tokio::test]
async fn publishes_cut_off_fail_and_publishing_recovers() {
    let admin = Admin::connect().await;
    let exchange = unique("cut-x");
    let queue = unique("cut-q");
    admin.owns_exchange(&exchange);
    admin.owns_queue(&queue);
    RabbitMqTopology::new()
        .exchange(&exchange)
        .queue(QueueSpec::new(&queue))
        .bind(&queue, &exchange, "#")
        .declare_on(admin.connection())
        .await
        .unwrap();
    let proxy = Proxy::start().await;
    let publisher = RabbitMqPublisher::connect(proxy.url()).await.unwrap();

    // Many publishes in flight when the connection is cut.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..400 {
        let message = Message::new(&exchange, format!("{n}"));
        let publisher = publisher.clone();
        tasks.spawn(async move {
            let id = message.id;
            (id, publisher.oneshot(message).await)
        });
        if n == 200 {
            proxy.cut();
        }
    }
    let mut reported_sent = BTreeSet::new();
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        let (id, result) = joined.unwrap();
        match result {
            Ok(()) => {
                reported_sent.insert(id.to_string());
            }
            Err(error) => {
                failed += 1;
                assert!(
                    Unavailable::is_unavailable(error.as_ref()),
                    "a cut connection is unavailable: {error}"
                );
            }
        }
    }
    assert!(failed > 0, "the cut failed some publishes");

    // While the broker is unreachable a publish fails at once.
    let during = publisher
        .clone()
        .oneshot(Message::new(&exchange, "during"))
        .await;
    let error = during.unwrap_err();
    assert!(Unavailable::is_unavailable(error.as_ref()), "{error}");

    proxy.restore().await;
    let after = Message::new(&exchange, "after");
    publisher
        .clone()
        .oneshot(after.clone())
        .await
        .expect("the publisher reconnects");
    reported_sent.insert(after.id.to_string());

    // Every publish reported as sent is in the queue (failed ones may be too: at least once).
    let stored: BTreeSet<String> = admin
        .drain_at_least(&queue, reported_sent.len())
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    let missing: Vec<_> = reported_sent.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "reported as sent but not stored: {missing:?}"
    );
    admin.cleanup().await;
}

#[tokio::test]
async fn unacked_deliveries_come_back_after_the_connection_drops() {
    let admin = Admin::connect().await;
    let exchange = unique("redeliver-x");
    let config = RabbitMqSourceConfig::new(unique("redeliver")).bind(&exchange, "#");
    admin.owns(&config);
    let proxy = Proxy::start().await;
    let source = RabbitMqSource::connect(proxy.url(), config).await.unwrap();
    let publisher = RabbitMqPublisher::connect(amqp_url()).await.unwrap();
    let mut sent = BTreeSet::new();
    for n in 0..3 {
        let message = Message::new(&exchange, format!("{n}"));
        sent.insert(message.id);
        publisher.clone().oneshot(message).await.unwrap();
    }
    let mut held = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while held.len() < 3 {
            held.extend(source.pull(3, Duration::from_secs(1)).await.unwrap());
        }
    })
    .await
    .expect("three deliveries");

    proxy.cut();
    // While cut, a pull fails (the consumer stream ends or reconnecting is refused).
    let cut = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Err(error) = source.pull(3, Duration::from_millis(200)).await {
                return error;
            }
        }
    })
    .await
    .expect("a pull fails while the connection is cut");
    assert!(cut.is_unreachable(), "{cut}");
    proxy.restore().await;

    // The old receipts cannot settle anything any more.
    for old in held {
        assert!(
            source.ack(old.receipt).await.is_err(),
            "an ack from the lost connection"
        );
    }
    let mut again = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while again.len() < 3 {
            match source.pull(3, Duration::from_secs(1)).await {
                Ok(pulled) => again.extend(pulled),
                Err(error) => {
                    // The broker may not have noticed the dead connection yet.
                    tracing::debug!(%error, "pull failed; trying again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await
    .expect("the unacked deliveries come again");
    let ids: BTreeSet<_> = again.iter().map(|p| p.delivery.message.id).collect();
    assert_eq!(ids, sent);
    for pulled in again {
        assert_eq!(
            pulled.delivery.attempt, 2,
            "the broker counted the lost delivery"
        );
        source.ack(pulled.receipt).await.unwrap();
    }
    source.close().await;
    admin.cleanup().await;
}
