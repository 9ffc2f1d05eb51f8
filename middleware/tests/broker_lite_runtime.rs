//! The consumer runtime against a real embedded broker-lite: redelivery after an error, dead
//! letters after max attempts and at once on `Reject`, ordered mode.

mod broker_lite_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_lite::broker::TraceKind;
use broker_lite::client::ConsumerConfig;
use broker_lite_support::{Calls, calls_of, eventually, recording, run, start_broker, stop};
use courier_middleware::{Consumer, Reject, Retry};
use courier_outbox::Message;
use tower::{Service, ServiceExt};

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
    assert!(env.dead_letters("billing").await.is_empty());
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
    let dead = env.dead_letters("billing").await;
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
    let dead = env.dead_letters("billing").await;
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
    let dead = env.dead_letters("billing").await;
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
