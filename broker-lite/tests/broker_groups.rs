//! Consumer groups: clustering rebalance, broadcasting, tag filters, long polling.

mod broker_common;

use std::collections::BTreeSet;
use std::time::Duration;

use broker_common::{Env, bodies};
use broker_lite::broker::{
    BrokerError, ConsumerSpec, MessageModel, PullRequest, SendRequest, TraceKind,
};

async fn send_to_every_queue(env: &Env, topic: &str, per_queue: u32) {
    for q in 0..4 {
        for i in 0..per_queue {
            let r = env
                .broker
                .send(SendRequest::new(topic, format!("q{q}-{i}")).with_queue(q))
                .await
                .unwrap();
            assert!(r.status.is_ok());
        }
    }
}

fn queues_of(env: &Env, group: &str, client: &str) -> BTreeSet<u32> {
    env.broker
        .groups()
        .into_iter()
        .find(|g| g.group == group)
        .unwrap()
        .members
        .into_iter()
        .find(|m| m.client_id == client)
        .map(|m| m.queues.into_iter().map(|(_, q)| q).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn clustering_splits_queues_and_moves_them_when_a_member_leaves() {
    let env = Env::new().await;
    let b = &env.broker;
    send_to_every_queue(&env, "t", 2).await;
    env.join("g", "a", "t").await;
    env.join("g", "b", "t").await;
    assert_eq!(queues_of(&env, "g", "a"), BTreeSet::from([0, 1]));
    assert_eq!(queues_of(&env, "g", "b"), BTreeSet::from([2, 3]));
    let from_a = env.pull("g", "a", "t", 100).await;
    let from_b = env.pull("g", "b", "t", 100).await;
    assert_eq!(from_a.len(), 4);
    assert_eq!(from_b.len(), 4);
    assert!(from_a.iter().all(|d| d.queue_id < 2));
    // b acks one message, then leaves with three in flight.
    b.ack(&from_b[0].receipt).await.unwrap();
    b.unsubscribe("g", "b").await.unwrap();
    assert_eq!(queues_of(&env, "g", "a"), BTreeSet::from([0, 1, 2, 3]));
    let moved = env.pull("g", "a", "t", 100).await;
    let expected: BTreeSet<_> = bodies(&from_b[1..]).into_iter().collect();
    assert_eq!(
        bodies(&moved).into_iter().collect::<BTreeSet<_>>(),
        expected
    );
    assert!(moved.iter().all(|d| d.receipt.attempt() == 2));
    // b's old receipts are stale for nack.
    assert!(matches!(
        b.nack(&from_b[1].receipt, None).await,
        Err(BrokerError::StaleReceipt { .. })
    ));
    assert!(matches!(
        b.pull(PullRequest::new("g", "b", "t")).await,
        Err(BrokerError::UnknownMember { .. })
    ));
}

#[tokio::test]
async fn a_member_that_misses_heartbeats_is_evicted_and_its_messages_go_to_the_survivor() {
    let env = Env::with(|c| c.heartbeat_timeout = Duration::from_secs(30)).await;
    let b = &env.broker;
    send_to_every_queue(&env, "t", 1).await;
    env.join("g", "a", "t").await;
    env.join("g", "b", "t").await;
    let from_b = env.pull("g", "b", "t", 100).await;
    assert_eq!(from_b.len(), 2);
    env.advance(Duration::from_secs(20));
    b.heartbeat("g", "a").await.unwrap();
    env.advance(Duration::from_secs(20));
    // a pulls (a heartbeat too); b has been silent for 40 s.
    let got = env.pull("g", "a", "t", 100).await;
    assert_eq!(queues_of(&env, "g", "a"), BTreeSet::from([0, 1, 2, 3]));
    let ids: BTreeSet<_> = got.iter().map(|d| d.message_id).collect();
    assert!(
        from_b.iter().all(|d| ids.contains(&d.message_id)),
        "b's un-acked messages redelivered to a"
    );
    assert_eq!(got.len(), 4);
    let groups = b.groups();
    assert_eq!(groups[0].members.len(), 1);
    assert!(matches!(
        b.heartbeat("g", "b").await,
        Err(BrokerError::UnknownMember { .. })
    ));
}

#[tokio::test]
async fn broadcasting_reaches_every_member() {
    let env = Env::new().await;
    let b = &env.broker;
    for c in ["a", "b", "c"] {
        b.subscribe(ConsumerSpec::new("cache", c, "t").with_model(MessageModel::Broadcasting))
            .await
            .unwrap();
    }
    assert!(matches!(
        b.subscribe(ConsumerSpec::new("cache", "d", "t")).await,
        Err(BrokerError::ModelMismatch { .. })
    ));
    send_to_every_queue(&env, "t", 2).await;
    for c in ["a", "b", "c"] {
        let d = env.pull("cache", c, "t", 100).await;
        assert_eq!(d.len(), 8, "member {c} gets every message");
        for d in &d[..7] {
            b.ack(&d.receipt).await.unwrap();
        }
    }
    // Offsets are per member: each one has its own single unsettled message.
    let lag = b.lag("cache").unwrap();
    assert_eq!(lag.len(), 12);
    assert_eq!(lag.iter().map(|l| l.unsettled).sum::<u64>(), 3);
    assert!(lag.iter().all(|l| l.consumer_id.is_some()));
    // Leaving on purpose drops that member's offsets.
    b.unsubscribe("cache", "c").await.unwrap();
    assert_eq!(b.lag("cache").unwrap().len(), 8);
}

#[tokio::test]
async fn tag_filter_skips_other_tags_as_consumed() {
    let env = Env::new().await;
    let b = &env.broker;
    b.create_topic("t", 1).await.unwrap();
    let mut ids = Vec::new();
    for (i, tag) in ["created", "paid", "created", "shipped"].iter().enumerate() {
        let r = b
            .send(SendRequest::new("t", format!("m{i}")).with_tag(*tag))
            .await
            .unwrap();
        ids.push(r.message_id);
    }
    b.subscribe(ConsumerSpec::new("g", "c", "t").with_tags(["created", "shipped"]))
        .await
        .unwrap();
    let d = env.pull("g", "c", "t", 1).await;
    assert_eq!(bodies(&d), ["m0"]);
    b.ack(&d[0].receipt).await.unwrap();
    let d = env.pull("g", "c", "t", 10).await;
    assert_eq!(bodies(&d), ["m2", "m3"]);
    for d in &d {
        b.ack(&d.receipt).await.unwrap();
    }
    assert_eq!(
        b.lag("g").unwrap()[0].lag,
        0,
        "the skipped message counts as consumed"
    );
    assert!(
        b.trace(ids[1])
            .iter()
            .any(|e| matches!(e.kind, TraceKind::Filtered { .. }))
    );
}

#[tokio::test]
async fn long_poll_returns_when_a_message_arrives() {
    let env = Env::new().await;
    let b = env.broker.clone();
    env.join("g", "c", "t").await;
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            b.pull(PullRequest::new("g", "c", "t").with_long_poll(Duration::from_secs(30)))
                .await
        }
    });
    tokio::task::yield_now().await;
    env.send("t", "late").await;
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(bodies(&got), ["late"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_members_each_get_every_message_exactly_once() {
    let env = Env::new().await;
    let b = env.broker.clone();
    b.create_topic("t", 8).await.unwrap();
    let total = 400;
    let results = b
        .send_batch(
            (0..total)
                .map(|i| SendRequest::new("t", format!("m{i}")).with_key(format!("k{}", i % 32)))
                .collect(),
        )
        .await
        .unwrap();
    assert!(results.iter().all(|r| r.status.is_ok()));
    for c in ["a", "b", "c"] {
        env.join("g", c, "t").await;
    }
    let mut workers = Vec::new();
    for c in ["a", "b", "c"] {
        let b = b.clone();
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let d = b
                    .pull(PullRequest::new("g", c, "t").with_max_messages(7))
                    .await
                    .unwrap();
                if d.is_empty() {
                    return got;
                }
                for d in d {
                    b.ack(&d.receipt).await.unwrap();
                    got.push(d.message_id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let unique: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), total);
    assert_eq!(unique.len(), total);
    assert!(b.lag("g").unwrap().iter().all(|l| l.lag == 0));
}

#[tokio::test]
async fn consume_from_latest_skips_history_and_one_member_can_consume_two_topics() {
    let env = Env::with(|c| c.consume_from = broker_lite::broker::ConsumeFrom::Latest).await;
    let b = &env.broker;
    env.send("a", "old").await;
    env.join("g", "c", "a").await;
    env.join("g", "c", "b").await;
    env.send("a", "new-a").await;
    env.send("b", "new-b").await;
    assert_eq!(bodies(&env.pull("g", "c", "a", 10).await), ["new-a"]);
    assert_eq!(bodies(&env.pull("g", "c", "b", 10).await), ["new-b"]);
    let groups = b.groups();
    assert_eq!(groups[0].topics, ["a", "b"]);
    assert_eq!(groups[0].members[0].queues.len(), 8);
}

#[tokio::test]
async fn close_ends_a_waiting_long_poll() {
    let env = Env::new().await;
    let b = env.broker.clone();
    env.join("g", "c", "t").await;
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            b.pull(PullRequest::new("g", "c", "t").with_long_poll(Duration::from_secs(30)))
                .await
        }
    });
    tokio::task::yield_now().await;
    b.close().await.unwrap();
    match waiter.await.unwrap() {
        Err(BrokerError::Closed) => {}
        Ok(d) => assert!(d.is_empty()),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn a_member_with_another_tag_filter_is_refused_so_no_message_is_acked_unread() {
    let env = Env::new().await;
    let b = &env.broker;
    b.create_topic("t", 2).await.unwrap();
    // The old version of the service takes "created"; the new one adds "paid".
    b.subscribe(ConsumerSpec::new("billing", "old", "t").with_tags(["created"]))
        .await
        .unwrap();
    let refused = b
        .subscribe(ConsumerSpec::new("billing", "new", "t").with_tags(["created", "paid"]))
        .await
        .unwrap_err();
    let BrokerError::SubscriptionMismatch {
        group,
        topic,
        member,
        existing,
        requested,
    } = &refused
    else {
        panic!("expected a subscription mismatch, got {refused:?}");
    };
    assert_eq!((group.as_str(), topic.as_str()), ("billing", "t"));
    assert_eq!(member, "old");
    assert_eq!(existing.as_deref(), Some(&["created".to_string()][..]));
    assert_eq!(requested.as_ref().map(Vec::len), Some(2));
    let text = refused.to_string();
    for part in [
        "\"billing\"",
        "\"t\"",
        "[\"created\"]",
        "[\"created\", \"paid\"]",
        "new consumer group",
    ] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
    // The refused member got no queue, so it skips (and acks) nothing.
    assert!(queues_of(&env, "billing", "new").is_empty());
    assert_eq!(queues_of(&env, "billing", "old"), BTreeSet::from([0, 1]));

    // Once the old members are gone, the group takes the new filter and gets "paid" messages.
    b.unsubscribe("billing", "old").await.unwrap();
    b.subscribe(ConsumerSpec::new("billing", "new", "t").with_tags(["created", "paid"]))
        .await
        .unwrap();
    let sent = b
        .send(SendRequest::new("t", "p").with_tag("paid").with_queue(0))
        .await
        .unwrap();
    assert!(sent.status.is_ok());
    assert_eq!(bodies(&env.pull("billing", "new", "t", 10).await), ["p"]);
}

#[tokio::test]
async fn equal_filters_join_and_a_lone_member_may_change_its_filter() {
    let env = Env::new().await;
    let b = &env.broker;
    b.subscribe(ConsumerSpec::new("g", "a", "t").with_tags(["x", "y"]))
        .await
        .unwrap();
    // The same set of tags in another order is the same filter.
    b.subscribe(ConsumerSpec::new("g", "b", "t").with_tags(["y", "x"]))
        .await
        .unwrap();
    // Every tag, spelled two ways, on another topic.
    b.subscribe(ConsumerSpec::new("g", "a", "u")).await.unwrap();
    b.subscribe(ConsumerSpec::new("g", "b", "u").with_tags(["*"]))
        .await
        .unwrap();
    // b may not change its filter while a uses the old one...
    assert!(matches!(
        b.subscribe(ConsumerSpec::new("g", "b", "t").with_tags(["x"]))
            .await,
        Err(BrokerError::SubscriptionMismatch { .. })
    ));
    // ...but alone it may.
    b.unsubscribe("g", "a").await.unwrap();
    b.subscribe(ConsumerSpec::new("g", "b", "t").with_tags(["x"]))
        .await
        .unwrap();
    // Broadcasting members have their own offsets: their filters may differ.
    for (c, tag) in [("a", "x"), ("b", "y")] {
        b.subscribe(
            ConsumerSpec::new("cache", c, "t")
                .with_model(MessageModel::Broadcasting)
                .with_tags([tag]),
        )
        .await
        .unwrap();
    }
}
