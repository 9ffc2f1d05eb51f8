//! Producer behaviour against scripted servers: failover, timeout, retries, one-way opt-in.

mod net_support;

use std::time::Duration;

use broker_lite::client::{ClientError, Producer, ProducerConfig};
use broker_lite::protocol::{ErrorCode, Message, SendStatus};
use broker_lite::server::ServerConfig;
use net_support::{MockServer, dead_addr};

fn config() -> ProducerConfig {
    let mut config = ProducerConfig::default();
    config.retry_backoff = Duration::from_millis(1);
    config
}

#[tokio::test]
async fn producer_fails_over_to_the_second_address_when_the_first_is_down() {
    let dead = dead_addr().await;
    let live = MockServer::start(ServerConfig::default()).await;
    let producer = Producer::connect(format!("{dead};{}", live.addr), config())
        .await
        .unwrap();
    let result = producer
        .send(Message::new("orders", "hello"))
        .await
        .unwrap();
    assert_eq!(result.status, SendStatus::SendOk);
}

#[tokio::test]
async fn producer_fails_over_when_its_broker_goes_away() {
    let mut first = MockServer::start(ServerConfig::default()).await;
    let second = MockServer::start(ServerConfig::default()).await;
    let producer = Producer::connect(
        vec![first.addr.to_string(), second.addr.to_string()],
        config(),
    )
    .await
    .unwrap();
    let first_result = producer.send(Message::new("orders", "one")).await.unwrap();
    assert!(first_result.is_ok());
    first.shutdown();
    (&mut first.task).await.unwrap().unwrap();
    let result = producer.send(Message::new("orders", "two")).await.unwrap();
    assert_eq!(result.status, SendStatus::SendOk);
}

#[tokio::test]
async fn send_times_out_and_gives_the_message_back() {
    let server = MockServer::start(ServerConfig::default()).await;
    let mut config = config();
    config.send_timeout = Duration::from_millis(50);
    config.retries = 0;
    let producer = Producer::connect(server.addr, config).await.unwrap();
    let err = producer
        .send(Message::new("slow", "never answered"))
        .await
        .unwrap_err();
    assert!(matches!(err.error, ClientError::Elapsed(_)), "{err}");
    assert_eq!(&err.message.body[..], b"never answered");
    assert!(
        err.message.message_id.is_some(),
        "the id is fixed before the first attempt"
    );
}

#[tokio::test]
async fn retries_are_counted_and_exhausted() {
    let server = MockServer::start(ServerConfig::default()).await;
    let mut config = config();
    config.send_timeout = Duration::from_millis(20);
    config.retries = 2;
    let producer = Producer::connect(server.addr, config).await.unwrap();
    let err = producer.send(Message::new("slow", "x")).await.unwrap_err();
    match err.error {
        ClientError::RetriesExhausted { attempts, last } => {
            assert_eq!(attempts, 3);
            assert!(matches!(*last, ClientError::Elapsed(_)));
        }
        other => panic!("expected exhausted retries, got {other}"),
    }
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let server = MockServer::start(ServerConfig::default()).await;
    let producer = Producer::connect(server.addr, config()).await.unwrap();
    let err = producer.send(Message::new("bad", "x")).await.unwrap_err();
    match err.error {
        ClientError::Server(reply) => assert_eq!(reply.code, ErrorCode::InvalidRequest),
        other => panic!("expected the broker's refusal, got {other}"),
    }
}

#[tokio::test]
async fn async_and_callback_sends_report_their_results() {
    let server = MockServer::start(ServerConfig::default()).await;
    let producer = Producer::connect(server.addr, config()).await.unwrap();
    let handles: Vec<_> = (0..20)
        .map(|i| producer.send_async(Message::new("t", format!("{i}"))))
        .collect();
    for handle in handles {
        assert!(handle.await.unwrap().is_ok());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer.send_with_callback(Message::new("t", "cb"), move |result| {
        let _ = tx.send(result.map(|r| r.status));
    });
    assert_eq!(rx.await.unwrap().unwrap(), SendStatus::SendOk);
}

#[tokio::test]
async fn oneway_sends_need_an_opt_in_per_topic() {
    let server = MockServer::start(ServerConfig::default()).await;
    let mut config = config();
    config.oneway_topics.insert("metrics".into());
    let producer = Producer::connect(server.addr, config).await.unwrap();
    let refused = producer
        .send_oneway(Message::new("orders", "x"))
        .await
        .unwrap_err();
    assert!(matches!(refused, ClientError::Refused(_)), "{refused}");
    producer
        .send_oneway(Message::new("metrics", "cpu=3"))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_empty_address_list_is_an_error() {
    let err = Producer::connect(" ; ", config()).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidAddress(_)), "{err}");
}
