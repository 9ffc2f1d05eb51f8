//! Producing and the basic consume round trip.

mod broker_common;

use broker_common::{Env, bodies};
use broker_lite::broker::{BrokerError, ConsumerSpec, PullRequest, SendRequest, SendStatus};

#[tokio::test]
async fn send_pull_ack_round_trip() {
    let env = Env::new().await;
    let b = &env.broker;
    let sent = b
        .send(
            SendRequest::new("orders", "order 42")
                .with_key("42")
                .with_tag("created")
                .with_property("trace-id", "t-1"),
        )
        .await
        .unwrap();
    assert_eq!(sent.status, SendStatus::SendOk);
    assert_eq!(sent.queue_offset, 0);
    env.join("billing", "b1", "orders").await;
    let d = env.pull("billing", "b1", "orders", 10).await;
    assert_eq!(d.len(), 1);
    let d = &d[0];
    assert_eq!(d.message_id, sent.message_id);
    assert_eq!((d.queue_id, d.queue_offset), (sent.queue_id, 0));
    assert_eq!(&d.body[..], b"order 42");
    assert_eq!(d.key.as_deref(), Some("42"));
    assert_eq!(d.tag.as_deref(), Some("created"));
    assert_eq!(d.properties["trace-id"], "t-1");
    assert_eq!(d.reconsume_times, 0);
    assert_eq!(d.receipt.attempt(), 1);
    b.ack(&d.receipt).await.unwrap();
    b.ack(&d.receipt).await.unwrap(); // idempotent
    assert!(env.pull("billing", "b1", "orders", 10).await.is_empty());
    let lag = b.lag("billing").unwrap();
    assert!(lag.iter().all(|l| l.lag == 0 && l.unsettled == 0));
    b.close().await.unwrap();
    assert!(matches!(
        b.send(SendRequest::new("orders", "late")).await,
        Err(BrokerError::Closed)
    ));
}

#[tokio::test]
async fn one_key_stays_in_one_queue_in_order() {
    let env = Env::new().await;
    let b = &env.broker;
    let mut queues = std::collections::HashMap::new();
    for i in 0..40 {
        let key = format!("k{}", i % 5);
        let r = b
            .send(SendRequest::new("orders", format!("{key}-{i}")).with_key(key.clone()))
            .await
            .unwrap();
        assert_eq!(*queues.entry(key).or_insert(r.queue_id), r.queue_id);
    }
    assert!(
        queues
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "five keys spread over several queues"
    );
    env.join("g", "c", "orders").await;
    let d = env.pull("g", "c", "orders", 100).await;
    assert_eq!(d.len(), 40);
    for k in 0..5 {
        let key = format!("k{k}");
        let seq: Vec<u32> = bodies(&d)
            .iter()
            .filter(|s| s.starts_with(&format!("{key}-")))
            .map(|s| s.rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, sorted, "order of {key} kept");
        assert_eq!(seq.len(), 8);
    }
}

#[tokio::test]
async fn batch_is_one_commit_and_round_robin_without_key() {
    let env = Env::new().await;
    let b = &env.broker;
    let results = b
        .send_batch(
            (0..8)
                .map(|i| SendRequest::new("t", format!("m{i}")))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 8);
    let mut per_queue = [0; 4];
    for r in &results {
        assert!(r.status.is_ok());
        per_queue[r.queue_id as usize] += 1;
    }
    assert_eq!(per_queue, [2, 2, 2, 2]);
}

#[tokio::test]
async fn unknown_topic_is_a_clear_error_when_auto_create_is_off() {
    let env = Env::with(|c| c.auto_create_topics = false).await;
    let b = &env.broker;
    let err = b.send(SendRequest::new("nope", "x")).await.unwrap_err();
    assert!(matches!(&err, BrokerError::UnknownTopic(t) if t == "nope"));
    assert!(err.to_string().contains("create_topic"), "{err}");
    let err = b
        .subscribe(ConsumerSpec::new("g", "c", "nope"))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::UnknownTopic(_)));
    b.create_topic("orders", 2).await.unwrap();
    assert!(matches!(
        b.create_topic("orders", 3).await,
        Err(BrokerError::TopicExists { queues: 2, .. })
    ));
    let r = b.send(SendRequest::new("orders", "x")).await.unwrap();
    assert!(r.queue_id < 2);
    assert!(matches!(
        b.send(SendRequest::new("orders", "x").with_queue(7)).await,
        Err(BrokerError::UnknownQueue { queues: 2, .. })
    ));
    assert_eq!(b.topics().len(), 1);
}

#[tokio::test]
async fn bad_requests_are_refused_before_storage() {
    let env = Env::new().await;
    let b = &env.broker;
    let big = vec![0u8; 40 * 1024];
    assert!(matches!(
        b.send(SendRequest::new("t", big)).await,
        Err(BrokerError::MessageTooLarge { .. })
    ));
    assert!(matches!(
        b.send(SendRequest::new("%DLQ%x", "x")).await,
        Err(BrokerError::InvalidName(..))
    ));
    assert!(matches!(
        b.send(SendRequest::new("t", "x").with_property("%ORIGIN_TOPIC%", "y"))
            .await,
        Err(BrokerError::InvalidRequest(_))
    ));
    assert!(matches!(
        b.pull(PullRequest::new("g", "c", "t")).await,
        Err(BrokerError::UnknownTopic(_))
    ));
}
