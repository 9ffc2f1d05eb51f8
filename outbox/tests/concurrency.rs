//! Several relays and writers at once, on every store: every message published exactly once,
//! per-key order kept.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Behaviour, Recorder, Running, TestStore, every_store, relay};
use courier_outbox::{Message, Outbox};
use sqlx::{Executor, Pool};
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

every_store!(
    two_relays_publish_every_message_exactly_once,
    same_key_order_survives_two_relays_and_failures,
    writers_and_relays_at_once_publish_every_message_once_in_key_order,
);

async fn enqueue<DB: TestStore>(pool: &Pool<DB>, messages: &[Message])
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    Outbox::new().enqueue_batch(pool, messages).await.unwrap();
}

async fn two_relays_publish_every_message_exactly_once<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let messages: Vec<Message> = (0..3000)
        .map(|i| {
            let message = Message::new("orders", format!("{i}"));
            if i % 3 == 0 {
                message
            } else {
                message.with_key(format!("key-{}", i % 97))
            }
        })
        .collect();
    enqueue(&pool, &messages).await;

    let recorder = Recorder::default();
    let first = Running::start(relay(&pool, &recorder, "twin-a").batch_size(50));
    let second = Running::start(relay(&pool, &recorder, "twin-b").batch_size(50));
    recorder.wait_for_accepted(messages.len()).await;
    first.stop().await;
    second.stop().await;

    let accepted = recorder.accepted_ids();
    let unique: HashSet<Uuid> = accepted.iter().copied().collect();
    assert_eq!(
        accepted.len(),
        messages.len(),
        "some message was published twice"
    );
    assert_eq!(unique, messages.iter().map(|m| m.id).collect());
    assert_eq!(DB::pending(&pool).await, 0);
}

async fn same_key_order_survives_two_relays_and_failures<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut messages = Vec::new();
    for round in 0..25 {
        for key in 0..16 {
            messages.push(Message::new("payments", format!("{round}")).with_key(format!("k{key}")));
        }
    }
    enqueue(&pool, &messages).await;

    let recorder = Recorder::default();
    // Every message fails on its first call and on some later ones, from both relays.
    let calls = recorder.clone();
    recorder.set_rule(move |message| {
        let call = calls.calls(message.id);
        if call == 0 || (message.id.as_u128() >> 7).wrapping_add(u128::from(call)) % 4 == 0 {
            Behaviour::Fail
        } else {
            Behaviour::Accept
        }
    });
    let start = |name| {
        Running::start(
            relay(&pool, &recorder, name)
                .batch_size(40)
                .max_attempts(100),
        )
    };
    let (first, second) = (start("order-a"), start("order-b"));
    recorder.wait_for_accepted(messages.len()).await;
    first.stop().await;
    second.stop().await;

    let mut rounds_by_key: HashMap<String, Vec<u32>> = HashMap::new();
    for message in recorder.accepted() {
        let round = std::str::from_utf8(&message.payload)
            .unwrap()
            .parse()
            .unwrap();
        rounds_by_key
            .entry(message.key.unwrap())
            .or_default()
            .push(round);
    }
    assert_eq!(rounds_by_key.len(), 16);
    for (key, rounds) in rounds_by_key {
        assert_eq!(
            rounds,
            (0..25).collect::<Vec<_>>(),
            "key {key} out of order"
        );
    }
    assert!(
        recorder.total_calls() > messages.len() as u32,
        "no failure was injected"
    );
}

async fn writers_and_relays_at_once_publish_every_message_once_in_key_order<DB: TestStore>(
    pool: Pool<DB>,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let recorder = Recorder::default();
    let start = |name| Running::start(relay(&pool, &recorder, name).batch_size(20));
    let (first, second) = (start("busy-a"), start("busy-b"));
    // Three writers, each committing one transaction per message (SQLite: one writer at a time,
    // taking turns with the relays' short claim and record transactions).
    let writer = async |writer: usize| {
        let mut sent = Vec::new();
        for i in 0..100 {
            let message = Message::new("t", format!("{i}")).with_key(format!("w{writer}"));
            let mut tx = DB::begin(&pool).await;
            Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
            tx.commit().await.unwrap();
            sent.push(message.id);
        }
        (format!("w{writer}"), sent)
    };
    let sent_by_key: HashMap<String, Vec<Uuid>> = futures::future::join_all((0..3).map(writer))
        .await
        .into_iter()
        .collect();
    recorder.wait_for_accepted(300).await;
    first.stop().await;
    second.stop().await;

    let mut published_by_key: HashMap<String, Vec<Uuid>> = HashMap::new();
    for message in recorder.accepted() {
        published_by_key
            .entry(message.key.unwrap())
            .or_default()
            .push(message.id);
    }
    assert_eq!(published_by_key, sent_by_key, "lost, repeated or reordered");
    assert_eq!(DB::pending(&pool).await, 0);
}
