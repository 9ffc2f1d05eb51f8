//! The sidecar hands each claimed batch to the broker in one call: on broker-lite, one
//! `SEND_BATCH` request (one group commit) instead of one `SEND` per message. Counted with the
//! broker's own request counter, read from this process's counting recorder (courier-test-support) (the broker runs
//! embedded here, the relay in its own process).

use std::process::{Command, Stdio};
use std::time::Duration;

use broker_lite::embedded::{self, EmbeddedConfig};
use courier_outbox::{Message, Outbox};
use sqlx::{ConnectOptions, PgPool};

courier_test_support::postgres_for_tests!();

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn the_sidecar_publishes_a_claimed_batch_to_broker_lite_in_one_request(pool: PgPool) {
    let counters = courier_test_support::counters();
    let data = tempfile::tempdir().unwrap();
    let broker = embedded::start(data.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    broker.broker().create_topic("orders", 4).await.unwrap();

    // The backlog is in the outbox before the relay starts, so its claims take whole batches.
    let messages: Vec<Message> = (0..200)
        .map(|i| Message::new("orders", format!("order {i}")).with_key(format!("order-{}", i % 20)))
        .collect();
    Outbox::new().enqueue_batch(&pool, &messages).await.unwrap();

    let url = pool.connect_options().to_url_lossy().to_string();
    let mut relay = Command::new(RELAY)
        .args([
            "--database-url",
            &url,
            "--broker",
            &broker.addr().to_string(),
        ])
        .args(["--http-listen", "off", "run"])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox.messages")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay left {left} of 200 messages in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.kill().unwrap();
    relay.wait().unwrap();

    for message in &messages {
        assert!(
            !broker.broker().trace(message.id).is_empty(),
            "message {} is not on the broker",
            message.id
        );
    }
    assert!(
        counters.broker_requests("send_batch") >= 1,
        "no SEND_BATCH request reached the broker:\n{counters:?}"
    );
    assert_eq!(
        counters.broker_requests("send"),
        0,
        "messages went one by one instead of in the claimed batch"
    );
}
