//! End to end over TCP: embedded broker, producer, consumer and admin clients.

use std::sync::Arc;
use std::time::Duration;

use broker_lite::broker::ManualClock;
use broker_lite::client::{Admin, AdminConfig, Consumer, ConsumerConfig, Producer, ProducerConfig};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::protocol::{FlushMode, Message, NackResult, Replication, SendStatus};
use broker_lite::storage;

struct Env {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    broker: EmbeddedBroker,
}

async fn start(tweak: impl FnOnce(&mut EmbeddedConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let mut config = EmbeddedConfig::default();
    config.broker.store.segment_size = 256 * 1024;
    config.broker.store.max_record_size = 64 * 1024;
    config.broker.max_message_size = 32 * 1024;
    config.broker.clock = Arc::new(clock.clone());
    config.broker.background_tasks = false;
    tweak(&mut config);
    let broker = embedded::start(dir.path(), config).await.unwrap();
    Env {
        _dir: dir,
        clock,
        broker,
    }
}

async fn clients(env: &Env, group: &str) -> (Producer, Consumer, Admin) {
    let addr = env.broker.addr();
    let producer = Producer::connect(addr, ProducerConfig::default())
        .await
        .unwrap();
    let consumer = Consumer::connect(addr, ConsumerConfig::new(group, "orders"))
        .await
        .unwrap();
    let admin = Admin::connect(addr, AdminConfig::default()).await.unwrap();
    (producer, consumer, admin)
}

#[tokio::test]
async fn send_pull_ack_lag_trace_and_lookup_over_tcp() {
    let env = start(|_| {}).await;
    let (producer, consumer, admin) = clients(&env, "billing").await;

    let first = producer
        .send(
            Message::new("orders", "order 42")
                .with_key("42")
                .with_tag("created"),
        )
        .await
        .unwrap();
    assert_eq!(first.status, SendStatus::SendOk);
    let second = producer
        .send(Message::new("orders", "order 43").with_key("42"))
        .await
        .unwrap();
    assert_eq!(second.status, SendStatus::SendOk);
    assert_eq!(
        (second.queue_id, second.queue_offset),
        (first.queue_id, first.queue_offset + 1)
    );

    let deliveries = consumer.pull(10, Duration::ZERO).await.unwrap();
    let bodies: Vec<_> = deliveries.iter().map(|d| d.message.body.clone()).collect();
    assert_eq!(bodies, ["order 42", "order 43"]);
    assert_eq!(deliveries[0].message.message_id, first.message_id);
    assert_eq!(deliveries[0].message.tag.as_deref(), Some("created"));

    let lag = admin.lag("billing").await.unwrap();
    assert_eq!(lag.iter().map(|l| l.lag).sum::<u64>(), 2, "{lag:?}");
    for d in &deliveries {
        consumer.ack(d).await.unwrap();
    }
    assert!(consumer.pull(10, Duration::ZERO).await.unwrap().is_empty());
    let lag = admin.lag("billing").await.unwrap();
    assert!(
        lag.iter().all(|l| l.lag == 0 && l.unsettled == 0),
        "{lag:?}"
    );

    let trace: Vec<_> = admin
        .trace(first.message_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(trace, ["stored", "delivered", "acked"]);
    let found = admin.lookup_by_id(first.message_id).await.unwrap().unwrap();
    assert_eq!(&found.body[..], b"order 42");
    assert_eq!(
        admin.lookup_by_key("orders", "42", 10).await.unwrap().len(),
        2
    );
    let groups = admin.groups().await.unwrap();
    assert_eq!(groups[0].name, "billing");
    assert_eq!(groups[0].members, [consumer.config().consumer_id.clone()]);
    assert!(
        admin
            .topics()
            .await
            .unwrap()
            .iter()
            .any(|t| t.name == "orders")
    );

    consumer.close().await.unwrap();
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn nack_redelivers_after_the_delay_level() {
    let env = start(|_| {}).await;
    let (producer, consumer, _admin) = clients(&env, "billing").await;
    let sent = producer
        .send(Message::new("orders", "retry me"))
        .await
        .unwrap();
    assert!(sent.is_ok());

    let first = consumer.pull(1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(first.reconsume_times, 0);
    let outcome = consumer.nack(&first, None).await.unwrap();
    assert_eq!(
        outcome,
        NackResult::Redeliver {
            after: Duration::from_secs(10)
        },
        "first redelivery at the 10 s level"
    );
    assert!(
        consumer.pull(1, Duration::ZERO).await.unwrap().is_empty(),
        "not before the delay"
    );

    env.clock.advance(Duration::from_secs(10));
    let again = consumer.pull(1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(again.message.message_id, sent.message_id);
    assert_eq!(again.reconsume_times, 1);
    consumer.ack(&again).await.unwrap();
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn dead_letters_can_be_listed_and_redriven() {
    let env = start(|c| c.broker.max_reconsume_times = 0).await;
    let (producer, consumer, admin) = clients(&env, "billing").await;
    let sent = producer
        .send(Message::new("orders", "poison"))
        .await
        .unwrap();
    assert!(sent.is_ok());
    let d = consumer.pull(1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(
        consumer.nack(&d, None).await.unwrap(),
        NackResult::DeadLettered
    );

    let dead = admin.dead_letters("billing", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, sent.message_id);
    assert_eq!(
        admin.redrive_dead_letters("billing", vec![]).await.unwrap(),
        1
    );
    let back = consumer.pull(1, Duration::ZERO).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message.message_id, sent.message_id);
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_consumer_dead_letters_a_delivery_at_once_over_tcp() {
    let env = start(|_| {}).await;
    let (producer, consumer, admin) = clients(&env, "billing").await;
    let sent = producer
        .send(Message::new("orders", "poison"))
        .await
        .unwrap();
    assert!(sent.is_ok());
    let d = consumer.pull(1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(d.reconsume_times, 0);
    assert!(
        d.first_delivered_at_ms > 0,
        "the first delivery time travels"
    );
    consumer.dead_letter(&d, Some("unparseable")).await.unwrap();
    assert!(
        consumer.dead_letter(&d, None).await.is_err(),
        "the receipt is settled"
    );

    env.clock.advance(Duration::from_secs(3 * 3600));
    assert!(consumer.pull(1, Duration::ZERO).await.unwrap().is_empty());
    let dead = admin.dead_letters("billing", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, sent.message_id);
    assert_eq!(dead[0].properties["%DEAD_LETTER_REASON%"], "unparseable");
    let trace = admin.trace(sent.message_id).await.unwrap();
    let events: Vec<&str> = trace.iter().map(|e| e.event.as_str()).collect();
    // Rejected by the member, stored in %DLQ%billing, then settled as dead-lettered.
    assert!(
        events.ends_with(&["rejected", "stored", "dead-lettered"]),
        "{events:?}"
    );
    assert!(trace[events.len() - 3].detail.contains("unparseable"));
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_is_answered_when_a_message_arrives() {
    let env = start(|_| {}).await;
    let (producer, consumer, admin) = clients(&env, "billing").await;
    admin.create_topic("orders", 2).await.ok();
    let poll = tokio::spawn(async move {
        let d = consumer.pull(1, Duration::from_secs(30)).await.unwrap();
        (consumer, d)
    });
    // The producer uses its own connection; the pull waits on the consumer's.
    let sent = producer
        .send(Message::new("orders", "wake up"))
        .await
        .unwrap();
    assert!(sent.is_ok());
    let (_consumer, deliveries) = poll.await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].message.message_id, sent.message_id);
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn producer_fails_over_from_a_stopped_broker_to_a_live_one() {
    let first = start(|_| {}).await;
    let second = start(|_| {}).await;
    let addresses = format!("{};{}", first.broker.addr(), second.broker.addr());
    let mut config = ProducerConfig::default();
    config.retry_backoff = Duration::from_millis(1);
    let producer = Producer::connect(addresses, config).await.unwrap();
    let before = producer
        .send(Message::new("orders", "to the first"))
        .await
        .unwrap();
    assert!(before.is_ok());
    assert!(
        first
            .broker
            .broker()
            .lookup(before.message_id)
            .await
            .unwrap()
            .is_some()
    );

    first.broker.shutdown().await.unwrap();
    let after = producer
        .send(Message::new("orders", "to the second"))
        .await
        .unwrap();
    assert!(after.is_ok());
    assert!(
        second
            .broker
            .broker()
            .lookup(after.message_id)
            .await
            .unwrap()
            .is_some()
    );
    second.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_evicted_consumer_subscribes_again_when_it_pulls() {
    let env = start(|_| {}).await;
    let (producer, consumer, admin) = clients(&env, "billing").await;
    let sent = producer
        .send(Message::new("orders", "after eviction"))
        .await
        .unwrap();
    assert!(sent.is_ok());
    // Silent past the heartbeat timeout: the broker evicts the member.
    env.clock.advance(Duration::from_secs(31));
    env.broker.broker().run_housekeeping().await.unwrap();
    assert!(admin.groups().await.unwrap()[0].members.is_empty());

    let deliveries = consumer.pull(1, Duration::ZERO).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].message.message_id, sent.message_id);
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn describe_reports_sync_flush_over_tcp() {
    let env = start(|c| {
        c.broker.store.flush_mode = storage::FlushMode::Sync;
        c.broker.store.sync_flush_timeout = Duration::from_millis(2_500);
        c.broker.store.file_reserved_time = Duration::from_secs(48 * 3600);
        c.broker.store.max_disk_usage = Some(1 << 30);
        c.broker.max_reconsume_times = 5;
    })
    .await;
    let admin = Admin::connect(env.broker.addr(), AdminConfig::default())
        .await
        .unwrap();
    let d = admin.describe().await.unwrap();
    assert_eq!(d.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(d.flush_mode, FlushMode::Sync);
    assert_eq!(d.sync_flush_timeout_ms, 2_500);
    assert_eq!(d.replication, Replication::None);
    assert_eq!(d.retention_ms, 48 * 3_600_000);
    assert_eq!(d.max_disk_bytes, Some(1 << 30));
    assert_eq!(d.max_message_size, 32 * 1024);
    assert_eq!(d.consume_timeout_ms, 15 * 60 * 1000);
    assert_eq!(d.max_reconsume_times, 5);
    env.broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn describe_reports_async_flush_over_tcp() {
    let env = start(|c| {
        c.broker.store.flush_mode = storage::FlushMode::Async {
            interval: Duration::from_millis(200),
        };
    })
    .await;
    let admin = Admin::connect(env.broker.addr(), AdminConfig::default())
        .await
        .unwrap();
    let d = admin.describe().await.unwrap();
    assert_eq!(
        d.flush_mode,
        FlushMode::Async {
            interval: Duration::from_millis(200)
        }
    );
    assert_eq!(
        d.retention_ms,
        72 * 3_600_000,
        "the default fileReservedTime"
    );
    assert_eq!(d.max_disk_bytes, None);
    env.broker.shutdown().await.unwrap();
}
