//! A scripted [`Handler`] for server and client tests that do not need a real broker.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use broker_lite::protocol::{
    ErrorCode, ErrorReply, MessageView, Request, Response, SendResult, SendStatus,
};
use broker_lite::server::{self, Handler, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Answers pings and sends; a send to topic `slow` waits for [`Mock::release`]; a pull waits
/// its long poll and answers nothing; sends to topic `bad` are refused.
#[derive(Clone)]
pub struct Mock {
    offsets: Arc<AtomicU64>,
    pub started: mpsc::UnboundedSender<()>,
    pub release: Arc<Notify>,
}

impl Handler for Mock {
    async fn handle(&self, request: Request) -> Result<Response, ErrorReply> {
        match request {
            Request::Ping => Ok(Response::Done),
            Request::Send(m) | Request::SendOneway(m) => {
                if m.topic == "bad" {
                    return Err(ErrorReply::new(
                        ErrorCode::InvalidRequest,
                        "topic bad is refused",
                    ));
                }
                if m.topic == "slow" {
                    let _ = self.started.send(());
                    self.release.notified().await;
                }
                Ok(Response::Send(SendResult {
                    status: SendStatus::SendOk,
                    message_id: m.message_id.unwrap_or_else(Uuid::now_v7),
                    queue_id: m.queue_id.unwrap_or(0),
                    queue_offset: self.offsets.fetch_add(1, Ordering::SeqCst),
                    duplicate: false,
                }))
            }
            Request::Pull(p) => {
                tokio::time::sleep(std::time::Duration::from_millis(p.long_poll_ms)).await;
                Ok(Response::Pull(Vec::new()))
            }
            // `max` messages of 100 bytes each: lets tests make responses of any size.
            Request::DeadLetters { max, .. } => Ok(Response::Messages(
                (0..max)
                    .map(|i| {
                        MessageView::new(
                            "%DLQ%g",
                            0,
                            u64::from(i),
                            Uuid::now_v7(),
                            vec![0u8; 100].into(),
                        )
                    })
                    .collect(),
            )),
            _ => Ok(Response::Done),
        }
    }
}

/// A running mock server.
pub struct MockServer {
    pub addr: SocketAddr,
    pub started: mpsc::UnboundedReceiver<()>,
    pub release: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl MockServer {
    pub async fn start(mut config: ServerConfig) -> MockServer {
        config.long_poll_slice = std::time::Duration::from_millis(5);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (started_tx, started) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let mock = Mock {
            offsets: Arc::new(AtomicU64::new(0)),
            started: started_tx,
            release: release.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, mock, config, async {
            let _ = stopped.await;
        }));
        MockServer {
            addr,
            started,
            release,
            stop: Some(stop),
            task,
        }
    }

    /// Begins the graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}
