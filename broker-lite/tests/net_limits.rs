//! Resource bounds against a misbehaving client (issue 16): silent and idle connections, a
//! flood of pipelined requests, and bytes in flight. Each leaves a well-behaved client served
//! ("got an answer", never a timing).

mod net_support;

use std::time::Duration;

use broker_lite::client::{ClientError, Connection};
use broker_lite::protocol::{
    ErrorCode, ErrorReply, Frame, FrameKind, FrameReader, PullRequest, Request,
};
use broker_lite::server::ServerConfig;
use bytes::{Bytes, BytesMut};
use net_support::MockServer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn client(server: &MockServer) -> Connection {
    Connection::connect(&server.addr.to_string(), TIMEOUT, 8 << 20)
        .await
        .unwrap()
}

fn ping_frame(request_id: u64) -> BytesMut {
    let mut buf = BytesMut::new();
    Frame {
        kind: FrameKind::Request,
        request_id,
        code: Request::Ping.code() as u16,
        body: Bytes::new(),
    }
    .encode(&mut buf);
    buf
}

/// The connection-level error the server sends before it closes `stream`.
async fn closing_error(stream: TcpStream) -> ErrorReply {
    let mut reader = FrameReader::new(stream, 8 << 20);
    loop {
        let frame = reader
            .read_frame()
            .await
            .unwrap()
            .expect("an error frame before the close");
        if frame.kind == FrameKind::Error && frame.request_id == 0 {
            return ErrorReply::decode(frame.body).unwrap();
        }
    }
}

/// The case of the issue: 1,100 connections opened and held silently used to take every one of
/// the 1,024 slots, and every legitimate client was refused.
#[tokio::test]
async fn eleven_hundred_silent_connections_do_not_lock_a_client_out() {
    let server = MockServer::start(ServerConfig::default()).await;
    let mut silent = Vec::new();
    for _ in 0..1_100 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let conn = client(&server).await;
    conn.request(&Request::Ping, TIMEOUT)
        .await
        .expect("a legitimate client is served");
    drop(silent);
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_handshake_timeout_and_frees_its_place() {
    let mut config = ServerConfig::default();
    config.max_handshaking = 1;
    let server = MockServer::start(config).await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let reply = closing_error(silent).await;
    assert_eq!(reply.code, ErrorCode::Timeout);
    assert!(
        reply
            .message
            .starts_with("no request within the handshake timeout of 10s"),
        "{reply}"
    );
    client(&server)
        .await
        .request(&Request::Ping, TIMEOUT)
        .await
        .unwrap();
}

/// A client that connects and sends its first request later than the handshake timeout (a
/// producer opened at start-up, a relay waiting for its tables) keeps its connection: `connect`
/// completes the handshake itself. It used to be closed at the timeout, with a warning.
#[tokio::test(start_paused = true)]
async fn a_client_that_waits_past_the_handshake_timeout_keeps_its_connection() {
    let server = MockServer::start(ServerConfig::default()).await;
    let conn = client(&server).await;
    tokio::time::sleep(ServerConfig::default().handshake_timeout * 2).await;
    assert!(
        !conn.is_closed(),
        "the broker closed a connected client at its handshake timeout"
    );
    conn.request(&Request::Ping, TIMEOUT)
        .await
        .expect("served on the same connection");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_and_frees_its_slot() {
    let mut config = ServerConfig::default();
    config.max_connections = 1;
    let server = MockServer::start(config).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(&ping_frame(1)).await.unwrap();
    let reply = closing_error(idle).await;
    assert_eq!(reply.code, ErrorCode::Timeout);
    assert!(reply.message.contains("(the idle timeout)"), "{reply}");
    // The only slot is free again.
    client(&server)
        .await
        .request(&Request::Ping, TIMEOUT)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_flood_of_pipelined_requests_that_are_never_read_leaves_others_served() {
    let server = MockServer::start(ServerConfig::default()).await;
    let mut flood = TcpStream::connect(server.addr).await.unwrap();
    let writer = tokio::spawn(async move {
        let mut batch = BytesMut::new();
        for id in 1..=1_000 {
            batch.extend_from_slice(&ping_frame(id));
        }
        // Blocks once the server stops reading this connection; the answers are never read.
        for _ in 0..200 {
            if flood.write_all(&batch).await.is_err() {
                break;
            }
        }
        flood
    });
    for _ in 0..3 {
        client(&server)
            .await
            .request(&Request::Ping, TIMEOUT)
            .await
            .expect("another client is served during the flood");
    }
    writer.abort();
}

#[tokio::test]
async fn a_pull_past_the_bytes_in_flight_is_refused_and_the_connection_stays_usable() {
    let mut config = ServerConfig::default();
    // Room for one pull's answer (a frame) and small requests, not for two pulls.
    config.max_bytes_in_flight_per_connection = config.limits.max_frame_size as usize * 3 / 2;
    let server = MockServer::start(config).await;
    let conn = client(&server).await;
    let pull = Request::Pull(PullRequest {
        group: "g".into(),
        consumer_id: "c".into(),
        topic: "t".into(),
        max_messages: 1,
        long_poll_ms: 600_000,
    });
    let waiting = {
        let (conn, pull) = (conn.clone(), pull.clone());
        tokio::spawn(async move { conn.request(&pull, TIMEOUT * 100).await })
    };
    // The server reads a connection's requests in order: once the ping is answered, the first
    // pull holds its room.
    conn.request(&Request::Ping, TIMEOUT).await.unwrap();
    match conn.request(&pull, TIMEOUT).await {
        Err(ClientError::Server(reply)) => {
            assert_eq!(reply.code, ErrorCode::LimitExceeded);
            assert!(
                reply.message.contains("max_bytes_in_flight_per_connection"),
                "{reply}"
            );
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    conn.request(&Request::Ping, TIMEOUT).await.unwrap();
    waiting.abort();
}
