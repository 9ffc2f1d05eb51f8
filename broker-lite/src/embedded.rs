//! Run the broker and its TCP server in-process.
//!
//! [`start`] opens a [`Broker`] on a directory and serves it with [`server::run`] on
//! [`EmbeddedConfig::listen`] (default `127.0.0.1:0`, an ephemeral port). The `broker-lite`
//! binary's `serve` command calls the same function, so tests and the quickstart exercise the
//! production code path.
//!
//! ```no_run
//! use broker_lite::client::{Producer, ProducerConfig};
//! use broker_lite::embedded::{self, EmbeddedConfig};
//! use broker_lite::protocol::Message;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let broker = embedded::start(dir.path(), EmbeddedConfig::default()).await?;
//! let producer = Producer::connect(broker.addr(), ProducerConfig::default()).await?;
//! let sent = producer.send(Message::new("orders", "hello")).await?;
//! assert!(sent.is_ok());
//! broker.shutdown().await?;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerConfig, BrokerError};
use crate::server::{self, ServerConfig};

/// Settings of an embedded broker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmbeddedConfig {
    /// Where to listen. Default `127.0.0.1:0` (an ephemeral port; see [`EmbeddedBroker::addr`]).
    pub listen: SocketAddr,
    /// The broker (and its storage) configuration.
    pub broker: BrokerConfig,
    /// The server configuration.
    pub server: ServerConfig,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            broker: BrokerConfig::default(),
            server: ServerConfig::default(),
        }
    }
}

/// Starting or stopping an embedded broker failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    /// The broker could not be opened or closed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The listen address could not be bound.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server task failed.
    #[error("the server task failed: {0}")]
    Server(String),
}

/// A running broker with its server.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    broker: Broker,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Opens the broker in `dir` and serves it on `config.listen`.
///
/// # Errors
///
/// [`EmbeddedError::Broker`] when the broker cannot open the directory (including an invalid
/// configuration), [`EmbeddedError::Bind`] when the address is taken.
pub async fn start(
    dir: impl AsRef<Path>,
    config: EmbeddedConfig,
) -> Result<EmbeddedBroker, EmbeddedError> {
    let broker = Broker::open(dir, config.broker).await?;
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(source) => {
            let _ = broker.close().await;
            return Err(EmbeddedError::Bind {
                addr: config.listen,
                source,
            });
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|source| EmbeddedError::Bind {
            addr: config.listen,
            source,
        })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        listener,
        broker.clone(),
        config.server,
        async {
            let _ = stopped.await;
        },
    ));
    Ok(EmbeddedBroker {
        addr,
        broker,
        stop: Some(stop),
        server: Some(server),
    })
}

impl EmbeddedBroker {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The in-process broker handle.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Stops the server gracefully (requests in flight are answered within the grace period),
    /// then closes the broker (offsets saved, log flushed).
    ///
    /// # Errors
    ///
    /// The broker's error on close, or a failed server task.
    pub async fn shutdown(mut self) -> Result<(), EmbeddedError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(EmbeddedError::Server(e.to_string())),
                Err(e) => return Err(EmbeddedError::Server(e.to_string())),
            }
        }
        self.broker.close().await?;
        Ok(())
    }
}

impl Drop for EmbeddedBroker {
    /// Dropping without [`EmbeddedBroker::shutdown`] stops the server but cannot close the
    /// broker cleanly (that needs an `await`); the log is still consistent on the next open.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
