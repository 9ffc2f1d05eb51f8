//! The writer against a real Postgres: transactions, batches, validation.

use std::time::Duration;

use courier_outbox::{Error, Limits, Message, Outbox, ValidationError};
use sqlx::PgPool;

courier_test_support::postgres_for_tests!();

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn committed_message_is_stored_with_its_envelope(pool: PgPool) {
    let message = Message::json("orders.created", &serde_json::json!({"id": 7}))
        .unwrap()
        .with_key("order-7")
        .with_tag("created")
        .with_header("tenant", "acme");
    let mut tx = pool.begin().await.unwrap();
    let id = Outbox::new().enqueue(&mut *tx, &message).await.unwrap();
    tx.commit().await.unwrap();

    let (topic, key, tag, tenant, payload, attempts): (
        String,
        String,
        String,
        String,
        Vec<u8>,
        i32,
    ) = sqlx::query_as(
        "SELECT topic, key, tag, headers->>'tenant', payload, attempts
             FROM outbox.messages WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (topic.as_str(), key.as_str(), tag.as_str(), tenant.as_str()),
        ("orders.created", "order-7", "created", "acme")
    );
    assert_eq!(payload, br#"{"id":7}"#);
    assert_eq!(attempts, 0);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn rolled_back_transaction_leaves_nothing(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
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
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn batch_keeps_slice_order_and_delays(pool: PgPool) {
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

    let rows: Vec<(Vec<u8>, bool)> = sqlx::query_as(
        "SELECT payload, available_at > now() + interval '59 minutes' FROM outbox.messages ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let payloads: Vec<String> = rows
        .iter()
        .map(|(p, _)| String::from_utf8(p.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    let delayed: Vec<bool> = rows.iter().map(|(_, d)| *d).collect();
    assert!(delayed[99] && !delayed[..99].iter().any(|d| *d));
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn invalid_message_in_a_batch_writes_none(pool: PgPool) {
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
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn duplicate_id_is_refused(pool: PgPool) {
    let message = Message::new("t", "once");
    Outbox::new().enqueue(&pool, &message).await.unwrap();
    let error = Outbox::new().enqueue(&pool, &message).await.unwrap_err();
    assert!(matches!(error, Error::Database(_)), "{error}");
}

#[sqlx::test]
async fn missing_tables_say_to_run_the_migrations(pool: PgPool) {
    let error = Outbox::new()
        .enqueue(&pool, &Message::new("t", ""))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotMigrated), "{error}");
    assert!(error.to_string().contains("run the migrations"));
}
