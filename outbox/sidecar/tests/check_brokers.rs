//! `outbox-relay check` against the shared NATS (`NATS_URL`) and RabbitMQ (`AMQP_URL`): what could
//! lose an acknowledged message is a warning (a stream that deletes unconsumed messages, a consumer
//! queue that is not a quorum queue). Names are unique to each test and deleted after it.

use std::process::{Command, Output};
use std::time::Duration;

use async_nats::jetstream::{self, stream::RetentionPolicy, stream::StorageType};
use courier_middleware::lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use courier_middleware::lapin::{Connection, ConnectionProperties, ExchangeKind};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

courier_test_support::postgres_for_tests!();

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn unique(prefix: &str) -> String {
    let id = Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 10..])
}

/// `outbox-relay check` with a config file holding `toml`, against `pool`'s database.
fn check(pool: &PgPool, toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, toml).unwrap();
    let url = pool.connect_options().to_url_lossy().to_string();
    Command::new(RELAY)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--database-url",
            &url,
            "check",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("OUTBOX_RELAY_BROKER")
        .output()
        .expect("the outbox-relay binary runs")
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_nats_stream_that_deletes_unconsumed_messages_is_a_warning(pool: PgPool) {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let topic = unique("CHECK");
    let js = jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: topic.clone(),
        subjects: vec![topic.clone()],
        storage: StorageType::Memory,
        retention: RetentionPolicy::Interest,
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let output = check(
        &pool,
        &format!("[broker]\naddresses = \"{url}\"\ncritical_topics = [\"{topic}\"]\n"),
    );
    js.delete_stream(&topic).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "uses memory storage",
        "has interest retention: a message published while no consumer is subscribed",
        "deletes messages after 3600s (max_age)",
        "JetStream acknowledges a publish before it is fsynced",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
}

#[sqlx::test(migrator = "courier_outbox::MIGRATOR")]
async fn a_classic_consumer_queue_is_reported_as_not_quorum(pool: PgPool) {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let topic = unique("check");
    let queue = format!("{topic}-billing");
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(&topic, ExchangeKind::Topic, durable, Default::default())
        .await
        .unwrap();
    // A queue declared the plain way, as many applications do: classic, no arguments.
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(&queue, durable, Default::default())
        .await
        .unwrap();
    let output = check(
        &pool,
        &format!(
            "[broker]\naddresses = \"{url}\"\ncritical_topics = [\"{topic}\"]\naudit_queues = [\"{queue}\"]\n"
        ),
    );
    channel
        .queue_delete(&queue, Default::default())
        .await
        .unwrap();
    channel
        .exchange_delete(&topic, Default::default())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("WARNING: queue {queue:?} is not a quorum queue")),
        "{stdout}"
    );
    assert!(stdout.contains("1 warning(s)"), "{stdout}");
}
