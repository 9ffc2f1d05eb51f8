//! `outbox-relay topology apply` / `topology check` against the shared NATS (`NATS_URL`) and
//! RabbitMQ (`AMQP_URL`): created once, "nothing to change" the second time, a check that passes
//! after, a clear error naming the field when what exists contradicts the configuration, and a
//! consumer that subscribes to what was provisioned. Every test uses names of its own and deletes
//! them.

use std::process::{Command, Output};

use async_nats::jetstream::{self, stream::StorageType};
use courier_middleware::lapin::options::QueueDeclareOptions;
use courier_middleware::lapin::types::{AMQPValue, FieldTable};
use courier_middleware::lapin::{Connection, ConnectionProperties};
use courier_middleware::nats::StreamSpec;
use courier_middleware::{BrokerAddress, Subscription};
use uuid::Uuid;

const RELAY: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A name of this test run's own.
fn unique(prefix: &str) -> String {
    let id = Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 10..])
}

fn relay(broker: &str, args: &[&str]) -> Output {
    Command::new(RELAY)
        .args(["--broker", broker, "topology"])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("OUTBOX_RELAY_CONFIG")
        .output()
        .expect("the outbox-relay binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn jetstream() -> jetstream::Context {
    jetstream::new(
        async_nats::connect(nats_url())
            .await
            .expect("NATS on NATS_URL"),
    )
}

#[tokio::test]
async fn nats_streams_are_created_once_checked_after_and_fit_the_consumer() {
    let topic = unique("TOPOLOGY");
    let stream = StreamSpec::for_topic(&topic).name().to_owned();
    let group = format!("{topic}-billing");
    let url = nats_url();
    let args = ["--topic", &topic, "--group", &format!("{group}={topic}")];
    let with = |command: &'static str| [&[command][..], &args[..]].concat();

    let before = relay(&url, &with("check"));
    assert_eq!(before.status.code(), Some(1), "{}", stdout(&before));
    assert!(
        stdout(&before).contains(&format!("stream {stream}: missing")),
        "{}",
        stdout(&before)
    );
    assert!(stderr(&before).contains("2 missing"), "{}", stderr(&before));

    let first = relay(&url, &with("apply"));
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(
        text.contains(&format!("stream {stream}: created (File storage")),
        "{text}"
    );
    assert!(
        text.contains(&format!("stream {stream}_DEAD_LETTERS: created")),
        "{text}"
    );
    assert!(
        text.contains("2 created, 0 already as configured"),
        "{text}"
    );

    let second = relay(&url, &with("apply"));
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("nothing to change: 2 already as configured"),
        "{}",
        stdout(&second)
    );

    let after = relay(&url, &with("check"));
    assert!(after.status.success(), "{}", stderr(&after));
    assert!(
        stdout(&after).contains("everything as configured: 2 checked"),
        "{}",
        stdout(&after)
    );

    let js = jetstream().await;
    let info = js
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.storage, StorageType::File);
    assert!(info.config.duplicate_window.as_secs() >= 120);
    // The consumer's own provisioning accepts what `apply` made (stream and dead-letter stream).
    let broker: BrokerAddress = url.parse().unwrap();
    let subscription = Subscription::new(&topic, &group);
    broker
        .subscribe(&subscription)
        .await
        .expect("subscribing after apply");
    broker.remove_provisioned(&subscription).await.unwrap();
}

#[tokio::test]
async fn a_nats_stream_with_memory_storage_is_a_contradiction_named_by_its_field() {
    let topic = unique("TOPOLOGY_MEMORY");
    let stream = StreamSpec::for_topic(&topic).name().to_owned();
    let js = jetstream().await;
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![topic.clone()],
        storage: StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();

    let apply = relay(&nats_url(), &["apply", "--topic", &topic]);
    let error = stderr(&apply);
    js.delete_stream(&stream).await.unwrap();
    assert_eq!(apply.status.code(), Some(1), "{}", stdout(&apply));
    assert!(
        error.contains(&format!(
            "NATS stream {stream} exists with storage = Memory"
        )) && error.contains("wants File"),
        "{error}"
    );
}

async fn amqp() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ on AMQP_URL")
}

#[tokio::test]
async fn rabbitmq_exchanges_and_quorum_queues_are_declared_once_and_checked_after() {
    let topic = unique("topology");
    let group = format!("{topic}-billing");
    let url = amqp_url();
    let args = ["--topic", &topic, "--group", &format!("{group}={topic}")];
    let with = |command: &'static str| [&[command][..], &args[..]].concat();

    let before = relay(&url, &with("check"));
    assert_eq!(before.status.code(), Some(1), "{}", stdout(&before));
    assert!(
        stdout(&before).contains(&format!("queue {group}: missing")),
        "{}",
        stdout(&before)
    );

    let first = relay(&url, &with("apply"));
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(
        text.contains(&format!("queue {group}: created (durable, quorum)")),
        "{text}"
    );
    assert!(
        text.contains(&format!("queue {group}.dlq: created")),
        "{text}"
    );
    assert!(
        text.contains(&format!("exchange {topic}: created")),
        "{text}"
    );

    let second = relay(&url, &with("apply"));
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("nothing to change"),
        "{}",
        stdout(&second)
    );
    let after = relay(&url, &with("check"));
    assert!(after.status.success(), "{}", stderr(&after));
    assert!(
        stdout(&after).contains("everything as configured"),
        "{}",
        stdout(&after)
    );

    // The consumer declares the same topology at connect: it must agree with `apply`'s.
    let broker: BrokerAddress = url.parse().unwrap();
    let subscription = Subscription::new(&topic, &group);
    broker
        .subscribe(&subscription)
        .await
        .expect("subscribing after apply");
    broker.remove_provisioned(&subscription).await.unwrap();
}

#[tokio::test]
async fn a_classic_queue_where_a_quorum_queue_is_configured_is_named_in_the_error() {
    let topic = unique("topology-classic");
    let group = format!("{topic}-billing");
    let connection = amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(&group, durable, classic)
        .await
        .unwrap();

    let apply = relay(
        &amqp_url(),
        &["apply", "--group", &format!("{group}={topic}")],
    );
    let check = relay(
        &amqp_url(),
        &["check", "--group", &format!("{group}={topic}")],
    );
    let broker: BrokerAddress = amqp_url().parse().unwrap();
    broker
        .remove_provisioned(&Subscription::new(&topic, &group))
        .await
        .unwrap();
    assert_eq!(apply.status.code(), Some(1), "{}", stdout(&apply));
    let error = stderr(&apply);
    assert!(
        error.contains(&format!(
            "queue '{group}' already exists with a different x-queue-type"
        )) && error.contains("quorum"),
        "{error}"
    );
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stdout(&check).contains(&format!(
            "queue {group}: exists with a different x-queue-type"
        )),
        "{}",
        stdout(&check)
    );
}

#[test]
fn broker_lite_says_what_it_does_instead_of_failing() {
    let output = relay("127.0.0.1:9876", &["apply", "--topic", "ORDER_CREATED"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("nothing to provision"),
        "{}",
        stdout(&output)
    );
    let output = relay("127.0.0.1:9876", &["apply"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no topics to provision"),
        "{}",
        stderr(&output)
    );
}
