//! Server behaviour with a scripted handler: bad frames, limits, pipelining, graceful shutdown.

mod net_support;

use std::time::Duration;

use broker_lite::client::{ClientError, Connection};
use broker_lite::protocol::{
    CONNECTION_REQUEST_ID, ErrorCode, ErrorReply, Frame, FrameKind, FrameReader, Message,
    PROTOCOL_VERSION, Request, Response,
};
use broker_lite::server::ServerConfig;
use bytes::{BufMut, Bytes, BytesMut};
use net_support::MockServer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn client(server: &MockServer) -> Connection {
    Connection::connect(&server.addr.to_string(), TIMEOUT, 8 << 20)
        .await
        .unwrap()
}

/// Writes raw bytes, then reads frames until the server closes the connection.
async fn raw_exchange(server: &MockServer, bytes: &[u8]) -> Vec<Frame> {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut reader = FrameReader::new(stream, 8 << 20);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = reader.read_frame().await {
        frames.push(frame);
    }
    frames
}

fn error_of(frame: &Frame) -> ErrorReply {
    assert_eq!(frame.kind, FrameKind::Error);
    ErrorReply::decode(frame.body.clone()).unwrap()
}

fn encode(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf
}

#[tokio::test]
async fn malformed_frame_gets_an_error_and_closes_only_that_connection() {
    let server = MockServer::start(ServerConfig::default()).await;
    let healthy = client(&server).await;
    healthy.request(&Request::Ping, TIMEOUT).await.unwrap();

    // Unknown version byte.
    let frames = raw_exchange(&server, &[0, 0, 0, 12, 99, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]).await;
    assert_eq!(
        frames.len(),
        1,
        "one error frame, then the connection is closed"
    );
    assert_eq!(frames[0].request_id, CONNECTION_REQUEST_ID);
    let reply = error_of(&frames[0]);
    assert_eq!(reply.code, ErrorCode::UnsupportedVersion);
    assert!(
        reply.message.contains("unsupported protocol version 99"),
        "{reply}"
    );

    // A good header with a garbage body.
    let garbage = Frame {
        kind: FrameKind::Request,
        request_id: 7,
        code: 2,
        body: Bytes::from_static(&[0xff; 9]),
    };
    let frames = raw_exchange(&server, &encode(&garbage)).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].request_id, 7);
    assert_eq!(error_of(&frames[0]).code, ErrorCode::MalformedFrame);

    // The other connection is unaffected.
    healthy.request(&Request::Ping, TIMEOUT).await.unwrap();
}

#[tokio::test]
async fn oversized_frame_gets_a_clear_error() {
    let mut config = ServerConfig::default();
    config.limits.max_frame_size = 1024;
    let server = MockServer::start(config).await;
    let mut header = BytesMut::new();
    header.put_u32(1_000_000);
    header.put_u8(PROTOCOL_VERSION);
    let frames = raw_exchange(&server, &header).await;
    assert_eq!(frames.len(), 1);
    let reply = error_of(&frames[0]);
    assert_eq!(reply.code, ErrorCode::FrameTooLarge);
    assert!(
        reply
            .message
            .contains("1000000 bytes exceeds the limit of 1024 bytes"),
        "{reply}"
    );
}

#[tokio::test]
async fn unknown_command_and_invalid_request_keep_the_connection_open() {
    let mut config = ServerConfig::default();
    config.limits.max_body_size = 8;
    let server = MockServer::start(config).await;
    let conn = client(&server).await;
    let too_big = Request::Send(Message::new("t", "more than eight bytes"));
    match conn.request(&too_big, TIMEOUT).await {
        Err(ClientError::Server(reply)) => {
            assert_eq!(reply.code, ErrorCode::InvalidRequest);
            assert!(
                reply.message.contains("exceeds the limit of 8 bytes"),
                "{reply}"
            );
        }
        other => panic!("expected an invalid request error, got {other:?}"),
    }
    conn.request(&Request::Ping, TIMEOUT).await.unwrap();

    let unknown = Frame {
        kind: FrameKind::Request,
        request_id: 3,
        code: 999,
        body: Bytes::new(),
    };
    let ping = Frame {
        kind: FrameKind::Request,
        request_id: 4,
        code: 1,
        body: Bytes::new(),
    };
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&encode(&unknown)).await.unwrap();
    stream.write_all(&encode(&ping)).await.unwrap();
    let mut reader = FrameReader::new(stream, 8 << 20);
    let first = reader.read_frame().await.unwrap().unwrap();
    assert_eq!(error_of(&first).code, ErrorCode::UnknownCommand);
    let second = reader.read_frame().await.unwrap().unwrap();
    assert_eq!((second.kind, second.request_id), (FrameKind::Response, 4));
}

#[tokio::test]
async fn past_the_limit_the_longest_idle_connection_makes_room_and_busy_ones_refuse() {
    let mut config = ServerConfig::default();
    config.max_connections = 1;
    let server = MockServer::start(config).await;
    let idle = client(&server).await;
    idle.request(&Request::Ping, TIMEOUT).await.unwrap();

    // The only slot is held by an idle connection: it is closed, with a clear error, to let
    // the newcomer in (issue 16).
    let newcomer = client(&server).await;
    newcomer
        .request(&Request::Ping, TIMEOUT)
        .await
        .expect("the newcomer is served");
    match idle.request(&Request::Ping, TIMEOUT).await {
        Err(ClientError::Server(reply)) => {
            assert_eq!(reply.code, ErrorCode::TooManyConnections);
            assert!(reply.message.contains("was idle longest"), "{reply}");
        }
        Err(ClientError::ConnectionLost { .. }) => {}
        other => panic!("expected the idle connection closed, got {other:?}"),
    }

    // A connection with a request in flight keeps its slot: the next newcomer is refused.
    let pull = Request::Pull(broker_lite::protocol::PullRequest {
        group: "g".into(),
        consumer_id: "c".into(),
        topic: "t".into(),
        max_messages: 1,
        long_poll_ms: 600_000,
    });
    let polling = {
        let newcomer = newcomer.clone();
        tokio::spawn(async move { newcomer.request(&pull, TIMEOUT * 100).await })
    };
    newcomer.request(&Request::Ping, TIMEOUT).await.unwrap();
    // A connection takes a slot once it has sent its first request (silent ones only wait
    // among the handshaking connections).
    let ping = Frame {
        kind: FrameKind::Request,
        request_id: 1,
        code: Request::Ping.code() as u16,
        body: Bytes::new(),
    };
    let frames = raw_exchange(&server, &encode(&ping)).await;
    assert_eq!(frames.len(), 1);
    let refused = error_of(&frames[0]);
    assert_eq!(refused.code, ErrorCode::TooManyConnections);
    assert!(
        refused.message.contains("limit of 1 connections"),
        "{refused}"
    );
    newcomer.request(&Request::Ping, TIMEOUT).await.unwrap();
    polling.abort();
}

#[tokio::test]
async fn a_long_poll_does_not_block_other_requests_on_the_connection() {
    let server = MockServer::start(ServerConfig::default()).await;
    let conn = client(&server).await;
    let pull = Request::Pull(broker_lite::protocol::PullRequest {
        group: "g".into(),
        consumer_id: "c".into(),
        topic: "t".into(),
        max_messages: 1,
        long_poll_ms: 60_000,
    });
    let poller = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(&pull, TIMEOUT * 10).await })
    };
    // Pipelined requests on the same connection are answered while the pull waits.
    let sends = (0..50).map(|i| {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.request(&Request::Send(Message::new("t", format!("m{i}"))), TIMEOUT)
                .await
        })
    });
    for send in sends {
        assert!(matches!(send.await.unwrap().unwrap(), Response::Send(_)));
    }
    assert!(!poller.is_finished());
    poller.abort();
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let mut server = MockServer::start(ServerConfig::default()).await;
    let conn = client(&server).await;
    // A long poll, then a slow send, on one connection; requests are read in order, so once the
    // send has started the pull is in flight too.
    let pull = Request::Pull(broker_lite::protocol::PullRequest {
        group: "g".into(),
        consumer_id: "c".into(),
        topic: "t".into(),
        max_messages: 1,
        long_poll_ms: 60_000,
    });
    let pulled = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(&pull, TIMEOUT).await })
    };
    let in_flight = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.request(&Request::Send(Message::new("slow", "x")), TIMEOUT)
                .await
        })
    };
    server.started.recv().await.unwrap();
    server.shutdown();
    // The long poll is answered with no deliveries rather than holding up the shutdown.
    let pulled = pulled.await.unwrap();
    assert!(
        matches!(pulled, Ok(Response::Pull(ref d)) if d.is_empty()),
        "{pulled:?}"
    );
    // The send in flight is still answered.
    server.release.notify_one();
    let answer = in_flight.await.unwrap();
    assert!(matches!(answer, Ok(Response::Send(_))), "{answer:?}");
    server.task.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_response_over_the_frame_limit_becomes_an_error_and_the_connection_stays_open() {
    let mut config = ServerConfig::default();
    config.limits.max_frame_size = 4096;
    let server = MockServer::start(config).await;
    let conn = client(&server).await;
    let small = Request::DeadLetters {
        group: "g".into(),
        max: 2,
    };
    assert!(
        matches!(conn.request(&small, TIMEOUT).await, Ok(Response::Messages(m)) if m.len() == 2)
    );
    let big = Request::DeadLetters {
        group: "g".into(),
        max: 100,
    };
    match conn.request(&big, TIMEOUT).await {
        Err(ClientError::Server(reply)) => {
            assert_eq!(reply.code, ErrorCode::Internal);
            assert!(
                reply
                    .message
                    .contains("exceeds the frame limit of 4096 bytes"),
                "{reply}"
            );
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    conn.request(&Request::Ping, TIMEOUT).await.unwrap();
}
