//! Redelivery: nack with delay levels, consume timeout, dead letters and redrive, ordered
//! consumption. Time moves only through the injected manual clock.

mod broker_common;

use std::time::Duration;

use broker_common::{Env, bodies};
use broker_lite::broker::{BrokerError, ConsumerSpec, NackOutcome, SendRequest, TraceKind};

#[tokio::test]
async fn nack_redelivers_after_the_delay_level_with_reconsume_times_raised() {
    let env = Env::new().await;
    let b = &env.broker;
    let sent = env.send("t", "m").await;
    env.join("g", "c", "t").await;
    let first = env.pull("g", "c", "t", 1).await.remove(0);
    assert_eq!(
        b.nack(&first.receipt, None).await.unwrap(),
        NackOutcome::Redeliver {
            after: Duration::from_secs(10)
        },
        "first redelivery at level 3"
    );
    assert!(
        matches!(
            b.nack(&first.receipt, None).await,
            Err(BrokerError::StaleReceipt { .. })
        ),
        "a settled delivery cannot be nacked twice"
    );
    env.advance(Duration::from_millis(9_999));
    assert!(env.pull("g", "c", "t", 1).await.is_empty(), "not due yet");
    env.advance(Duration::from_millis(1));
    let second = env.pull("g", "c", "t", 1).await.remove(0);
    assert_eq!(second.message_id, sent);
    assert_eq!(second.reconsume_times, 1);
    assert_eq!(second.receipt.attempt(), 2);
    assert_eq!(second.first_delivered_at_ms, first.first_delivered_at_ms);
    // The next level is 30 s; an explicit level overrides it.
    assert_eq!(
        b.nack(&second.receipt, Some(1)).await.unwrap(),
        NackOutcome::Redeliver {
            after: Duration::from_secs(1)
        }
    );
    env.advance(Duration::from_secs(1));
    let third = env.pull("g", "c", "t", 1).await.remove(0);
    assert_eq!(third.reconsume_times, 2);
    b.ack(&third.receipt).await.unwrap();
    env.advance(Duration::from_secs(3600));
    assert!(env.pull("g", "c", "t", 1).await.is_empty());
}

#[tokio::test]
async fn unsettled_message_is_redelivered_after_the_consume_timeout() {
    let env = Env::with(|c| c.consume_timeout = Duration::from_secs(60)).await;
    let b = &env.broker;
    env.send("t", "slow").await;
    env.join("g", "c", "t").await;
    let first = env.pull("g", "c", "t", 1).await.remove(0);
    env.advance(Duration::from_secs(59));
    assert!(env.pull("g", "c", "t", 1).await.is_empty());
    env.advance(Duration::from_secs(1));
    let again = env.pull("g", "c", "t", 1).await.remove(0);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.reconsume_times, 1);
    assert!(matches!(
        b.nack(&first.receipt, None).await,
        Err(BrokerError::StaleReceipt { .. })
    ));
    // A late ack of the old delivery still settles the message.
    b.ack(&first.receipt).await.unwrap();
    b.ack(&again.receipt).await.unwrap();
    let kinds: Vec<_> = b
        .trace(first.message_id)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, TraceKind::TimedOut { .. }))
    );
}

#[tokio::test]
async fn dead_letter_after_max_reconsume_then_redrive() {
    let env = Env::with(|c| c.max_reconsume_times = 2).await;
    let b = &env.broker;
    let sent = b
        .send(SendRequest::new("t", "poison").with_key("k").with_tag("x"))
        .await
        .unwrap();
    env.send("t", "other").await;
    env.join("g", "c", "t").await;
    env.join("other-group", "o", "t").await;
    let mut outcome = None;
    for round in 0..3 {
        env.advance(Duration::from_secs(3600));
        let d = env.pull("g", "c", "t", 10).await;
        let poison = d.iter().find(|d| d.message_id == sent.message_id).unwrap();
        assert_eq!(poison.reconsume_times, round);
        for other in d.iter().filter(|d| d.message_id != sent.message_id) {
            b.ack(&other.receipt).await.unwrap();
        }
        outcome = Some(b.nack(&poison.receipt, None).await.unwrap());
    }
    assert_eq!(outcome, Some(NackOutcome::DeadLettered));
    env.advance(Duration::from_secs(3600));
    assert!(env.pull("g", "c", "t", 10).await.is_empty());
    assert!(b.lag("g").unwrap().iter().all(|l| l.lag == 0));

    let dead = b.dead_letters("g", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, sent.message_id);
    assert_eq!(dead[0].topic, "%DLQ%g");
    assert_eq!(dead[0].properties["%ORIGIN_TOPIC%"], "t");
    assert_eq!(dead[0].properties["%RECONSUME_TIMES%"], "2");
    assert_eq!(&dead[0].body[..], b"poison");

    assert_eq!(b.redrive_dead_letters("g", None).await.unwrap(), 1);
    assert!(b.dead_letters("g", 10).await.unwrap().is_empty());
    assert_eq!(b.redrive_dead_letters("g", None).await.unwrap(), 0);
    let back = env.pull("g", "c", "t", 10).await;
    assert_eq!(bodies(&back), ["poison"]);
    assert_eq!(back[0].message_id, sent.message_id);
    assert_eq!(back[0].reconsume_times, 0, "reconsume count reset");
    assert_eq!(back[0].key.as_deref(), Some("k"));
    b.ack(&back[0].receipt).await.unwrap();
    // The other group gets the original once and skips the copy re-driven for "g".
    env.join("other-group", "o", "t").await;
    let other = env.pull("other-group", "o", "t", 10).await;
    assert_eq!(bodies(&other).len(), 2);
    let kinds: Vec<_> = b
        .trace(sent.message_id)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, TraceKind::DeadLettered { group } if group == "g"))
    );
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, TraceKind::Redriven { .. }))
    );
}

#[tokio::test]
async fn dead_letter_moves_a_delivery_to_the_dlq_at_once_with_its_reason() {
    let env = Env::new().await;
    let b = &env.broker;
    let sent = b
        .send(
            SendRequest::new("t", "not json")
                .with_key("k")
                .with_property("tenant", "acme"),
        )
        .await
        .unwrap();
    env.send("t", "fine").await;
    env.join("g", "c", "t").await;
    let d = env.pull("g", "c", "t", 10).await;
    let poison = d.iter().find(|d| d.message_id == sent.message_id).unwrap();
    b.dead_letter(&poison.receipt, Some("not valid JSON".into()))
        .await
        .unwrap();
    assert!(
        matches!(
            b.dead_letter(&poison.receipt, None).await,
            Err(BrokerError::StaleReceipt { .. })
        ),
        "a settled delivery cannot be dead-lettered twice"
    );
    assert!(
        matches!(
            b.nack(&poison.receipt, None).await,
            Err(BrokerError::StaleReceipt { .. })
        ),
        "nor nacked after"
    );
    for other in d.iter().filter(|d| d.message_id != sent.message_id) {
        b.ack(&other.receipt).await.unwrap();
    }

    // No redelivery, whatever the time; the queue's committed offset moved past it.
    env.advance(Duration::from_secs(3 * 3600));
    assert!(env.pull("g", "c", "t", 10).await.is_empty());
    assert!(b.lag("g").unwrap().iter().all(|l| l.lag == 0));

    let dead = b.dead_letters("g", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, sent.message_id);
    assert_eq!(dead[0].topic, "%DLQ%g");
    assert_eq!(dead[0].key.as_deref(), Some("k"));
    assert_eq!(dead[0].properties["tenant"], "acme");
    assert_eq!(dead[0].properties["%ORIGIN_TOPIC%"], "t");
    assert_eq!(dead[0].properties["%RECONSUME_TIMES%"], "0");
    assert_eq!(dead[0].properties["%DEAD_LETTER_REASON%"], "not valid JSON");

    let kinds: Vec<_> = b
        .trace(sent.message_id)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    let rejected = kinds.iter().position(|k| {
        matches!(k, TraceKind::Rejected { group, client_id, reason }
            if group == "g" && client_id == "c" && reason.as_deref() == Some("not valid JSON"))
    });
    let dead_lettered = kinds
        .iter()
        .position(|k| matches!(k, TraceKind::DeadLettered { group } if group == "g"));
    assert!(
        rejected.is_some() && rejected < dead_lettered,
        "rejected, then dead-lettered: {kinds:?}"
    );

    // A re-drive brings it back without the broker's properties.
    assert_eq!(b.redrive_dead_letters("g", None).await.unwrap(), 1);
    let back = env.pull("g", "c", "t", 10).await;
    assert_eq!(bodies(&back), ["not json"]);
    assert!(!back[0].properties.contains_key("%DEAD_LETTER_REASON%"));
    assert_eq!(back[0].properties["tenant"], "acme");
}

#[tokio::test]
async fn dead_letter_in_ordered_mode_lets_the_queue_move_on() {
    let env = Env::new().await;
    let b = &env.broker;
    b.create_topic("seq", 1).await.unwrap();
    for i in 0..3 {
        env.send("seq", &format!("m{i}")).await;
    }
    b.subscribe(ConsumerSpec::new("g", "c", "seq").ordered(true))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = env.pull("g", "c", "seq", 10).await.remove(0);
        let body = String::from_utf8(d.body.to_vec()).unwrap();
        if body == "m1" {
            b.dead_letter(&d.receipt, None).await.unwrap();
        } else {
            b.ack(&d.receipt).await.unwrap();
        }
        seen.push(body);
    }
    assert_eq!(seen, ["m0", "m1", "m2"]);
    let dead = b.dead_letters("g", 10).await.unwrap();
    assert_eq!(bodies_of(&dead), ["m1"]);
    assert!(!dead[0].properties.contains_key("%DEAD_LETTER_REASON%"));
}

fn bodies_of(messages: &[broker_lite::broker::StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn ordered_consumption_keeps_order_through_a_nack() {
    let env = Env::new().await;
    let b = &env.broker;
    b.create_topic("seq", 1).await.unwrap();
    for i in 0..4 {
        env.send("seq", &format!("m{i}")).await;
    }
    b.subscribe(ConsumerSpec::new("g", "c", "seq").ordered(true))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut nacked = false;
    for _ in 0..20 {
        let d = env.pull("g", "c", "seq", 10).await;
        if d.is_empty() {
            env.advance(Duration::from_secs(10));
            continue;
        }
        assert_eq!(d.len(), 1, "one message per queue in flight");
        let d = &d[0];
        // Nothing else is delivered while it is in flight.
        assert!(env.pull("g", "c", "seq", 10).await.is_empty());
        let body = String::from_utf8(d.body.to_vec()).unwrap();
        if body == "m1" && !nacked {
            nacked = true;
            let outcome = b.nack(&d.receipt, None).await.unwrap();
            assert!(matches!(outcome, NackOutcome::Redeliver { .. }));
            continue;
        }
        seen.push(body);
        b.ack(&d.receipt).await.unwrap();
    }
    assert_eq!(seen, ["m0", "m1", "m2", "m3"]);
}

#[tokio::test]
async fn repeated_consume_timeouts_end_in_the_dead_letter_topic() {
    let env = Env::with(|c| {
        c.max_reconsume_times = 1;
        c.consume_timeout = Duration::from_secs(60);
    })
    .await;
    let b = &env.broker;
    let id = env.send("t", "stuck").await;
    env.join("g", "c", "t").await;
    for round in 0..2 {
        let d = env.pull("g", "c", "t", 1).await;
        assert_eq!(d[0].reconsume_times, round);
        env.advance(Duration::from_secs(60));
    }
    assert!(env.pull("g", "c", "t", 1).await.is_empty());
    let dead = b.dead_letters("g", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, id);
    assert!(b.lag("g").unwrap().iter().all(|l| l.lag == 0));
}
