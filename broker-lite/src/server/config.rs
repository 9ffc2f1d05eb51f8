//! Server configuration.

use std::time::Duration;

use crate::protocol::Limits;

/// Configuration of [`run`](super::run) and [`serve`](super::serve).
///
/// ```
/// use std::time::Duration;
/// use broker_lite::server::ServerConfig;
///
/// let mut config = ServerConfig::default();
/// config.max_connections = 64;
/// config.shutdown_grace = Duration::from_secs(2);
/// assert_eq!(config.limits.max_batch, 1024);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Frame, body and batch size limits.
    pub limits: Limits,
    /// Most simultaneous connections; extra ones get an error frame and are closed. Default 1024.
    pub max_connections: usize,
    /// Most requests being handled at once on one connection; the connection stops reading
    /// until one finishes. Default 1024.
    pub max_in_flight_per_connection: usize,
    /// How long in-flight requests may run after shutdown begins. Default 10 s.
    pub shutdown_grace: Duration,
    /// Longest long poll a pull may ask for; longer ones are shortened. Default 30 s.
    pub max_long_poll: Duration,
    /// A long poll is served as a series of handler pulls of at most this wait, and shutdown is
    /// checked between them, so that shutdown never cancels a pull that may already have
    /// reserved messages (they would stay in flight until the consume timeout). Default 500 ms.
    pub long_poll_slice: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            max_connections: 1024,
            max_in_flight_per_connection: 1024,
            shutdown_grace: Duration::from_secs(10),
            max_long_poll: Duration::from_secs(30),
            long_poll_slice: Duration::from_millis(500),
        }
    }
}
