//! Ordered queues during a rebalance: the new owner of an ordered queue gets nothing while the
//! old owner still runs a message of it, until the old owner settles it or its consume timeout
//! (its lease) passes. Never two messages of one ordered queue in flight, in two members.

mod broker_common;

use std::time::Duration;

use broker_common::{Env, bodies};
use broker_lite::broker::{ConsumerSpec, Delivery, SendRequest};

const CONSUME_TIMEOUT: Duration = Duration::from_secs(60);

/// Two messages on queue 0; "m2" joins ordered and starts running the first; then "m1" joins and
/// takes queue 0 over (members sorted by id get contiguous blocks of queues).
async fn queue_moves_while_running() -> (Env, Delivery) {
    let env = Env::with(|c| {
        c.consume_timeout = CONSUME_TIMEOUT;
        c.heartbeat_timeout = Duration::from_secs(30);
    })
    .await;
    for body in ["n", "n+1"] {
        let sent = env
            .broker
            .send(SendRequest::new("t", body).with_queue(0))
            .await
            .unwrap();
        assert!(sent.status.is_ok());
    }
    join_ordered(&env, "m2").await;
    let running = env.pull("g", "m2", "t", 10).await;
    assert_eq!(bodies(&running), ["n"]);
    join_ordered(&env, "m1").await;
    let owners = env.broker.groups();
    let m1 = owners[0].members.iter().find(|m| m.client_id == "m1");
    assert!(m1.unwrap().queues.contains(&("t".to_string(), 0)));
    (env, running.into_iter().next().unwrap())
}

async fn join_ordered(env: &Env, client: &str) {
    env.broker
        .subscribe(ConsumerSpec::new("g", client, "t").ordered(true))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_new_owner_waits_until_the_old_owner_acks() {
    let (env, running) = queue_moves_while_running().await;
    assert!(
        env.pull("g", "m1", "t", 10).await.is_empty(),
        "n still runs at m2"
    );
    env.broker.ack(&running.receipt).await.unwrap();
    let next = env.pull("g", "m1", "t", 10).await;
    assert_eq!(bodies(&next), ["n+1"]);
}

#[tokio::test]
async fn a_nack_by_the_old_owner_hands_the_same_message_to_the_new_owner() {
    let (env, running) = queue_moves_while_running().await;
    assert!(env.pull("g", "m1", "t", 10).await.is_empty());
    let _ = env.broker.nack(&running.receipt, Some(1)).await.unwrap();
    env.advance(Duration::from_secs(1));
    let again = env.pull("g", "m1", "t", 10).await;
    assert_eq!(bodies(&again), ["n"]);
    assert_eq!(again[0].reconsume_times, 1);
}

#[tokio::test]
async fn a_silent_old_owner_holds_the_queue_until_its_consume_timeout() {
    let (env, running) = queue_moves_while_running().await;
    // m2 misses its heartbeats and is evicted; it may still be running n, so n stays with it.
    env.advance(Duration::from_secs(31));
    assert!(env.pull("g", "m1", "t", 10).await.is_empty());
    assert_eq!(env.broker.groups()[0].members.len(), 1, "m2 was evicted");
    // Its lease runs out: n is redelivered to m1, and m2's late receipt can no longer nack.
    env.advance(CONSUME_TIMEOUT);
    let again = env.pull("g", "m1", "t", 10).await;
    assert_eq!(bodies(&again), ["n"]);
    assert_eq!(again[0].receipt.attempt(), 2);
    assert!(env.broker.nack(&running.receipt, None).await.is_err());
}

#[tokio::test]
async fn unordered_deliveries_still_move_at_once() {
    let env = Env::new().await;
    let sent = env
        .broker
        .send(SendRequest::new("t", "x").with_queue(0))
        .await
        .unwrap();
    assert!(sent.status.is_ok());
    env.join("g", "m2", "t").await;
    assert_eq!(env.pull("g", "m2", "t", 10).await.len(), 1);
    env.join("g", "m1", "t").await;
    assert_eq!(bodies(&env.pull("g", "m1", "t", 10).await), ["x"]);
}
