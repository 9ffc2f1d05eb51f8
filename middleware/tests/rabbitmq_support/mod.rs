//! Shared by the RabbitMQ suites: the broker address, unique names with cleanup, a direct
//! connection to inspect queues, and a TCP proxy whose connections a test can cut.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_middleware::lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use courier_middleware::lapin::types::FieldTable;
use courier_middleware::lapin::{Channel, Connection, ConnectionProperties};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Patience for anything a test waits on: fail instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `AMQP_URL`, else the local broker.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A unique name for this test's queues and exchanges.
pub fn unique(prefix: &str) -> String {
    format!("courier-test.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// A direct connection (not through any proxy) to look at and clean up what a test declared.
pub struct Admin {
    connection: Connection,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

impl Admin {
    pub async fn connect() -> Self {
        let url = amqp_url();
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "these tests need RabbitMQ: cannot connect to {url}: {error}; start it \
                     (`rabbitmq-server -detached`) or set AMQP_URL"
                )
            });
        Self {
            connection,
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
        }
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub async fn channel(&self) -> Channel {
        self.connection.create_channel().await.unwrap()
    }

    /// Remembers `queue` for [`cleanup`](Self::cleanup).
    pub fn owns_queue(&self, queue: impl Into<String>) {
        self.queues.lock().unwrap().push(queue.into());
    }

    /// Remembers `exchange` for [`cleanup`](Self::cleanup).
    pub fn owns_exchange(&self, exchange: impl Into<String>) {
        self.exchanges.lock().unwrap().push(exchange.into());
    }

    /// Remembers every queue and exchange of a source configuration.
    pub fn owns(&self, config: &courier_middleware::RabbitMqSourceConfig) {
        let topology = config.topology();
        for queue in topology.queues() {
            self.owns_queue(queue.name());
        }
        for exchange in topology.exchanges() {
            self.owns_exchange(exchange);
        }
    }

    /// Messages ready in `queue` (not delivered to a consumer).
    pub async fn ready(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel()
            .await
            .queue_declare(queue, options, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// Takes (and acks) every message ready in `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<courier_middleware::lapin::message::Delivery> {
        let channel = self.channel().await;
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(queue, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(message.delivery);
        }
        out
    }

    /// Waits until `queue` holds at least `n` ready messages, then takes them all.
    pub async fn drain_at_least(
        &self,
        queue: &str,
        n: usize,
    ) -> Vec<courier_middleware::lapin::message::Delivery> {
        let mut out = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            while out.len() < n {
                out.extend(self.drain(queue).await);
                if out.len() < n {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{queue} got {} of {n} messages", out.len()));
        out
    }

    /// Deletes what the test declared, from a thread of its own (for `Drop`, where the test's
    /// runtime cannot be waited on).
    pub fn cleanup_blocking(&self) {
        let queues: Vec<String> = self.queues.lock().unwrap().drain(..).collect();
        let exchanges: Vec<String> = self.exchanges.lock().unwrap().drain(..).collect();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let admin = Admin::connect().await;
                admin.queues.lock().unwrap().extend(queues);
                admin.exchanges.lock().unwrap().extend(exchanges);
                admin.cleanup().await;
            });
        })
        .join();
    }

    /// Deletes what the test declared.
    pub async fn cleanup(&self) {
        let channel = self.channel().await;
        let queues: Vec<String> = self.queues.lock().unwrap().drain(..).collect();
        let exchanges: Vec<String> = self.exchanges.lock().unwrap().drain(..).collect();
        for queue in queues {
            let _ = channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await;
        }
        for exchange in exchanges {
            let _ = channel
                .exchange_delete(&exchange, ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "test done").await;
    }
}

/// A TCP proxy in front of the broker. [`cut`](Self::cut) drops every connection through it and
/// refuses new ones (the port is closed) until [`restore`](Self::restore).
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    listener: Option<AbortHandle>,
    connections: Vec<AbortHandle>,
}

impl Proxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = upstream_addr();
        let proxy = Self {
            addr,
            upstream,
            state: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    /// The broker URL through the proxy.
    pub fn url(&self) -> String {
        let url = amqp_url();
        let (scheme, rest) = url.split_once("://").unwrap();
        let (credentials, host_and_path) =
            rest.rsplit_once('@').map_or(("", rest), |(c, h)| (c, h));
        let path = host_and_path.split_once('/').map_or("", |(_, p)| p);
        let at = if credentials.is_empty() { "" } else { "@" };
        format!("{scheme}://{credentials}{at}{}/{path}", self.addr)
    }

    /// Drops every open connection and closes the port.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        if let Some(listener) = state.listener.take() {
            listener.abort();
        }
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// Opens the port again (same address).
    pub async fn restore(&self) {
        let listener = tokio::time::timeout(PATIENCE, async {
            loop {
                match TcpListener::bind(self.addr).await {
                    Ok(listener) => return listener,
                    // The aborted accept loop may not have released the port yet.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .expect("the proxy port can be bound again");
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let upstream = self.upstream;
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    state.lock().unwrap().connections.push(relay.abort_handle());
                }
            }
        });
        state.lock().unwrap().listener = Some(accept.abort_handle());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

fn upstream_addr() -> SocketAddr {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap();
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    };
    let host = host.replace("localhost", "127.0.0.1");
    host.parse().expect("AMQP_URL names an IP address and port")
}

/// A port nothing listens on.
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}
