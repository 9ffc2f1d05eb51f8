//! A TCP proxy in front of Postgres that can be frozen: it then forwards nothing more in either
//! direction, not even a close, while keeping every socket open. To both ends this looks like a
//! network partition whose peers' kernels still answer: nothing arrives, nothing fails.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards connections to `upstream` until frozen; everything stops when it is dropped.
pub(crate) struct FreezableProxy {
    pub(crate) addr: SocketAddr,
    frozen: watch::Sender<bool>,
    _tasks: JoinSet<()>,
}

impl FreezableProxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let accepting = frozen.clone();
        tasks.spawn(async move {
            // Connections die with this task (and the proxy): a JoinSet aborts on drop.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let frozen = accepting.subscribe();
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        forward(client_read, server_write, frozen.clone()),
                        forward(server_read, client_write, frozen),
                    );
                });
            }
        });
        Self {
            addr,
            frozen,
            _tasks: tasks,
        }
    }

    /// From now on nothing passes, in either direction, on any connection old or new.
    pub(crate) fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Copies `from` to `to` until end of stream; once frozen, holds what it read (data or the end
/// of the stream) forever.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = from.read(&mut buffer).await.unwrap_or(0);
        if *frozen.borrow() {
            // Keep both halves (so both sockets stay open) and never deliver.
            std::future::pending::<()>().await;
        }
        if read == 0 || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
