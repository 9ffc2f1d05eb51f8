//! The writer on every store: transactions, batches, validation, what comes out of the relay.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Recorder, Running, TestStore, every_store, relay};
use courier_outbox::{Error, Limits, Message, Outbox, ValidationError};
use sqlx::{Executor, Pool};
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

every_store!(
    committed_message_is_stored_with_its_envelope,
    rolled_back_transaction_leaves_nothing,
    batch_keeps_slice_order_and_delays,
    invalid_message_in_a_batch_writes_none,
    duplicate_id_is_refused,
    published_messages_keep_every_field,
);
every_store!(unmigrated: missing_tables_say_to_run_the_migrations);

async fn committed_message_is_stored_with_its_envelope<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let message = Message::json("orders.created", &serde_json::json!({"id": 7}))
        .unwrap()
        .with_key("order-7")
        .with_tag("created")
        .with_header("tenant", "acme");
    let mut tx = DB::begin(&pool).await;
    let id = Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
    tx.commit().await.unwrap();

    let row = DB::row(&pool, id).await;
    assert_eq!(
        (row.topic.as_str(), row.key.as_deref(), row.tag.as_deref()),
        ("orders.created", Some("order-7"), Some("created"))
    );
    assert_eq!(row.headers["tenant"], "acme");
    assert_eq!(row.payload, br#"{"id":7}"#);
    assert_eq!(row.attempts, 0);
}

async fn rolled_back_transaction_leaves_nothing<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut tx = DB::begin(&pool).await;
    Outbox::new()
        .enqueue(&mut *tx, &Message::new("orders", "x"))
        .await
        .unwrap();
    Outbox::new()
        .enqueue_batch(
            &mut *tx,
            &[Message::new("orders", "y"), Message::new("orders", "z")],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(DB::pending(&pool).await, 0);
}

async fn batch_keeps_slice_order_and_delays<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let messages: Vec<Message> = (0..100)
        .map(|i| {
            let message = Message::new("t", format!("{i}")).with_key("same");
            if i == 99 {
                message.with_delay(Duration::from_secs(3600))
            } else {
                message
            }
        })
        .collect();
    let written = Outbox::new().enqueue_batch(&pool, &messages).await.unwrap();
    assert_eq!(written, 100);

    let rows = DB::rows(&pool).await;
    let payloads: Vec<String> = rows
        .iter()
        .map(|row| String::from_utf8(row.payload.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    let in_59_minutes = chrono::Utc::now() + chrono::Duration::minutes(59);
    let delayed: Vec<bool> = rows
        .iter()
        .map(|row| row.available_at > in_59_minutes)
        .collect();
    assert!(delayed[99] && !delayed[..99].iter().any(|d| *d));
}

async fn invalid_message_in_a_batch_writes_none<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let outbox = Outbox::with_limits(Limits {
        max_payload_bytes: 8,
        ..Limits::default()
    });
    let error = outbox
        .enqueue_batch(
            &pool,
            &[Message::new("t", "ok"), Message::new("t", "far too long")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Invalid(ValidationError::PayloadTooLarge { len: 12, max: 8 })
        ),
        "{error}"
    );
    let error = outbox
        .enqueue(&pool, &Message::new("", ""))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("the topic is empty"), "{error}");
    assert_eq!(DB::pending(&pool).await, 0);
}

async fn duplicate_id_is_refused<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let message = Message::new("t", "once");
    Outbox::new().enqueue(&pool, &message).await.unwrap();
    let error = Outbox::new().enqueue(&pool, &message).await.unwrap_err();
    assert!(matches!(error, Error::Database(_)), "{error}");
    let error = Outbox::new()
        .enqueue_batch(&pool, std::slice::from_ref(&message))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Database(_)), "{error}");
    assert_eq!(DB::pending(&pool).await, 1);
}

/// What the writer stores, the relay publishes unchanged, from a batch or a single insert.
async fn published_messages_keep_every_field<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let full = || {
        Message::new("orders.created", vec![0_u8, 159, 146, 150, 255])
            .with_key("ключ-7 🔑")
            .with_tag("created")
            .with_header("tenant", "acme")
            .with_header("trace", "00-abc-01")
    };
    let past = chrono::Utc::now() - chrono::Duration::minutes(5);
    let batch = [full(), Message::new("bare", ""), full().deliver_at(past)];
    let single = [full(), Message::new("bare", "")];
    Outbox::new().enqueue_batch(&pool, &batch).await.unwrap();
    for message in &single {
        Outbox::new().enqueue(&pool, message).await.unwrap();
    }

    let recorder = Recorder::default();
    let running = Running::start(relay(&pool, &recorder, "faithful"));
    recorder.wait_for_accepted(batch.len() + single.len()).await;
    running.stop().await;
    let published: HashMap<Uuid, Message> =
        recorder.accepted().into_iter().map(|m| (m.id, m)).collect();
    for sent in batch.iter().chain(&single) {
        let got = &published[&sent.id];
        assert_eq!(
            (&got.topic, &got.key, &got.tag, &got.headers, &got.payload),
            (
                &sent.topic,
                &sent.key,
                &sent.tag,
                &sent.headers,
                &sent.payload
            ),
        );
        let micros = |at: chrono::DateTime<chrono::Utc>| at.timestamp_micros();
        assert_eq!(micros(got.created_at), micros(sent.created_at));
        assert_eq!(got.attempts, 0);
    }
    assert_eq!(
        published[&batch[2].id]
            .available_at
            .map(|at| at.timestamp_micros()),
        Some(past.timestamp_micros())
    );
}

async fn missing_tables_say_to_run_the_migrations<DB: TestStore>(pool: Pool<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    for error in [
        Outbox::new()
            .enqueue(&pool, &Message::new("t", ""))
            .await
            .unwrap_err(),
        Outbox::new()
            .enqueue_batch(&pool, &[Message::new("t", "")])
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(error, Error::NotMigrated), "{error}");
        assert!(error.to_string().contains("run the migrations"));
    }
}
