//! The attacks against a real broker (issue 16), not a scripted handler: 1,100 silent
//! connections to a broker with users, and a flood of pipelined 1 KiB sends whose answers are
//! never read. Each time a well-behaved client still gets its answers (asserted as answers, never as
//! timings).

mod security_support;

use std::time::Duration;

use broker_lite::client::{Consumer, ConsumerConfig, Producer, ProducerConfig};
use broker_lite::protocol::{Frame, FrameKind, Message, Request};
use bytes::BytesMut;
use security_support::{as_user, start_with};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// alice sends one message and her consumer receives and acks it.
async fn alice_is_served(addr: std::net::SocketAddr, body: &'static str) {
    let mut config = ProducerConfig::default();
    config.security = as_user("alice");
    let producer = Producer::connect(addr, config)
        .await
        .expect("alice connects");
    let sent = producer.send(Message::new("orders", body)).await.unwrap();
    assert!(sent.is_ok(), "{sent:?}");
    let mut config = ConsumerConfig::new("billing", "orders");
    config.security = as_user("alice");
    let consumer = Consumer::connect(addr, config)
        .await
        .expect("alice subscribes");
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(consumer.pull(10, Duration::from_secs(1)).await.unwrap());
        if got.iter().any(|d| d.message.message_id == sent.message_id) {
            break;
        }
    }
    let d = got
        .iter()
        .find(|d| d.message.message_id == sent.message_id)
        .expect("alice receives her message");
    consumer.ack(d).await.unwrap();
}

#[tokio::test]
async fn eleven_hundred_silent_connections_leave_an_authenticated_client_served() {
    let env = start_with(|config| {
        // The server's defaults, stated: 1,024 connections, 256 of them in their handshake.
        config.server.max_connections = 1024;
        config.server.max_handshaking = 256;
    })
    .await;
    let addr = env.broker.addr();
    let mut silent = Vec::new();
    for _ in 0..1_100 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    alice_is_served(addr, "through the crowd").await;
    drop(silent);
}

/// The same crowd on an open broker, where a connection is established by its first request:
/// 1,100 connections that each send one ping and then hold still take more than the 1,024
/// slots until their idle timeout (5 minutes).
#[tokio::test]
async fn eleven_hundred_idle_connections_leave_a_client_of_an_open_broker_served() {
    let env = start_with(|config| config.server.users = None).await;
    let addr = env.broker.addr();
    let mut idle = Vec::new();
    for id in 0..1_100u64 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut ping = BytesMut::new();
        Frame {
            kind: FrameKind::Request,
            request_id: id + 1,
            code: Request::Ping.code() as u16,
            body: bytes::Bytes::new(),
        }
        .encode(&mut ping);
        stream.write_all(&ping).await.unwrap();
        idle.push(stream);
    }
    let producer = Producer::connect(addr, ProducerConfig::default())
        .await
        .expect("a client connects");
    let sent = producer
        .send(Message::new("orders", "past the idle crowd"))
        .await
        .expect("a client is answered");
    assert!(sent.is_ok(), "{sent:?}");
    drop(idle);
}

#[tokio::test]
async fn a_flood_of_pipelined_sends_never_read_leaves_another_producer_served() {
    // Open, so that the flood needs no SCRAM exchange by hand: it is one more raw connection.
    let env = start_with(|config| config.server.users = None).await;
    let addr = env.broker.addr();
    let mut flood = TcpStream::connect(addr).await.unwrap();
    let writer = tokio::spawn(async move {
        let mut batch = BytesMut::new();
        for id in 1..=1_000u64 {
            let send = Request::Send(Message::new("flood", vec![b'x'; 1024]));
            Frame {
                kind: FrameKind::Request,
                request_id: id,
                code: send.code() as u16,
                body: send.encode_body(),
            }
            .encode(&mut batch);
        }
        // Blocks once the server stops reading this connection; the answers are never read.
        for _ in 0..100 {
            if flood.write_all(&batch).await.is_err() {
                break;
            }
        }
        flood
    });
    for i in 0..3 {
        let producer = Producer::connect(addr, ProducerConfig::default())
            .await
            .unwrap();
        let sent = producer
            .send(Message::new("orders", format!("during the flood {i}")))
            .await
            .expect("another client is answered during the flood");
        assert!(sent.is_ok(), "{sent:?}");
    }
    writer.abort();
}
