//! A list of broker addresses with one cached connection and failover (safeguard P9).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::Mutex;

use super::connection::Connection;
use super::error::{ClientError, Result};
use crate::protocol::{Request, Response};

/// Broker addresses, tried in order.
///
/// Built from a `"host1:port;host2:port"` list (`;` or `,` separated, RocketMQ style), a
/// `Vec` of strings, or socket addresses.
///
/// ```
/// use broker_lite_client::Addresses;
///
/// let a = Addresses::from("10.0.0.1:9876; 10.0.0.2:9876");
/// assert_eq!(a.as_slice(), ["10.0.0.1:9876", "10.0.0.2:9876"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses(Vec<String>);

impl Addresses {
    /// The addresses in order.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(";"))
    }
}

impl From<&str> for Addresses {
    fn from(list: &str) -> Self {
        Addresses(
            list.split([';', ','])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )
    }
}

impl From<String> for Addresses {
    fn from(list: String) -> Self {
        Addresses::from(list.as_str())
    }
}

impl From<Vec<String>> for Addresses {
    fn from(list: Vec<String>) -> Self {
        Addresses(list)
    }
}

impl From<Vec<&str>> for Addresses {
    fn from(list: Vec<&str>) -> Self {
        Addresses(list.into_iter().map(String::from).collect())
    }
}

impl From<SocketAddr> for Addresses {
    fn from(addr: SocketAddr) -> Self {
        Addresses(vec![addr.to_string()])
    }
}

impl From<Vec<SocketAddr>> for Addresses {
    fn from(list: Vec<SocketAddr>) -> Self {
        Addresses(list.into_iter().map(|a| a.to_string()).collect())
    }
}

/// Connection settings shared by the clients.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOptions {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_frame_size: u32,
    pub(crate) security: super::security::Security,
}

#[derive(Debug)]
struct State {
    /// Index of the address to use next.
    current: usize,
    connection: Option<Connection>,
}

/// The addresses and the connection in use.
#[derive(Debug)]
pub(crate) struct Endpoints {
    addresses: Vec<String>,
    options: ConnectOptions,
    state: Mutex<State>,
}

impl Endpoints {
    pub(crate) fn new(addresses: Addresses, options: ConnectOptions) -> Result<Endpoints> {
        if addresses.0.is_empty() {
            return Err(ClientError::InvalidAddress(
                "no broker address given".into(),
            ));
        }
        Ok(Endpoints {
            addresses: addresses.0,
            options,
            state: Mutex::new(State {
                current: 0,
                connection: None,
            }),
        })
    }

    /// The open connection, or a new one to the first address that accepts, starting with the
    /// current one and going round the list once.
    pub(crate) async fn connection(&self) -> Result<Connection> {
        let mut state = self.state.lock().await;
        if let Some(conn) = &state.connection {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
            state.connection = None;
        }
        let mut last = None;
        for i in 0..self.addresses.len() {
            let index = (state.current + i) % self.addresses.len();
            let addr = &self.addresses[index];
            match Connection::connect_with(
                addr,
                self.options.connect_timeout,
                self.options.max_frame_size,
                &self.options.security,
            )
            .await
            {
                Ok(conn) => {
                    tracing::debug!(%addr, "connected to broker");
                    state.current = index;
                    state.connection = Some(conn.clone());
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %super::error::chain(&e), "broker address unreachable, trying the next one");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one address"))
    }

    /// Forgets `conn` after a failure and moves on to the next address.
    pub(crate) async fn failed(&self, conn: &Connection) {
        let mut state = self.state.lock().await;
        if state.connection.as_ref().is_some_and(|c| c.same(conn)) {
            state.connection = None;
            state.current = (state.current + 1) % self.addresses.len();
        }
    }

    /// One attempt: the current connection, the request, and failover bookkeeping on a
    /// retryable failure.
    pub(crate) async fn call(&self, request: &Request, timeout: Duration) -> Result<Response> {
        let conn = self.connection().await?;
        let result = conn.request(request, timeout).await;
        if let Err(e) = &result {
            if e.is_retryable() {
                self.failed(&conn).await;
            }
        }
        result
    }

    /// Like [`Endpoints::call`], trying each address once while the failure is a connection
    /// failure or a broker that does not serve the request (`ShuttingDown`: a closing broker, a
    /// replication follower, or a fenced former leader), so that a client with the addresses of
    /// a replicated pair finds the current leader.
    pub(crate) async fn call_failover(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call(request, timeout).await {
                Err(e) if attempt < self.addresses.len() && moves_on(&e) => {
                    tracing::debug!(error = %super::error::chain(&e), "retrying on the next broker address");
                }
                other => return other,
            }
        }
    }
}

/// Whether [`Endpoints::call_failover`] tries the next address after `e`.
fn moves_on(e: &ClientError) -> bool {
    match e {
        ClientError::ConnectionLost { .. } | ClientError::Connect { .. } => true,
        ClientError::Server(reply) => reply.code == crate::protocol::ErrorCode::ShuttingDown,
        _ => false,
    }
}
