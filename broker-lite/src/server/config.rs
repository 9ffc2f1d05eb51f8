//! Server configuration.

use std::time::Duration;

use crate::protocol::Limits;

use super::{ServerTls, Users};

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
    /// Most simultaneous established connections. When all are taken, the one idle longest
    /// is closed to make room for a newcomer; when every one has a request in flight, the
    /// newcomer gets an error frame and is closed. Default 1024.
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
    /// The users that may connect. `None` (the default): no authentication, every connection
    /// may do anything, which suits a broker on loopback only; with a table, every connection
    /// must authenticate (SCRAM-SHA-256) before any other command.
    pub users: Option<std::sync::Arc<Users>>,
    /// TLS on the listener. Default none (plain TCP); a plain-text client then gets a clear
    /// error frame.
    pub tls: Option<ServerTls>,
    /// How long a new connection may take to finish TLS and authentication (or, on an open
    /// broker, to send its first request) before it is closed. Default 10 s.
    pub handshake_timeout: Duration,
    /// Most connections in their handshake at once; when full, the one that has waited longest
    /// is closed to make room. Default 256.
    pub max_handshaking: usize,
    /// An established connection that sends nothing for this long while it has no request in
    /// flight is closed (the clients reconnect on their next request). Default 5 min, well
    /// above the consumer's heartbeat interval.
    pub idle_timeout: Duration,
    /// Most request and answer bytes held at once for one connection; past it the connection
    /// is read no further until answers go out, and a pull that would go over is refused with
    /// `LimitExceeded`. Default 256 MiB.
    pub max_bytes_in_flight_per_connection: usize,
    /// Most topics one principal may create (by sending to, subscribing to or creating a topic
    /// that does not exist); past it such a request is refused with `LimitExceeded` and
    /// creates nothing, while topics that exist stay usable and other principals keep their
    /// own allowance. On an open broker every connection is the one principal `anonymous`.
    /// Counted since the server started. Default 10 000.
    pub max_topics_per_principal: usize,
    /// Most consumer groups one principal may create (by subscribing to a group that does not
    /// exist), on the same terms as [`max_topics_per_principal`](Self::max_topics_per_principal).
    /// Default 10 000.
    pub max_groups_per_principal: usize,
    /// Most bytes of the answer to a dead-letter listing or key lookup (counted as encoded);
    /// the paged commands end a page there with a cursor for the next, the older unpaged ones
    /// return the first page only. At most the frame size less its header is used; a single
    /// message larger than this budget is still returned, alone. Default 4 MiB.
    pub max_response_bytes: usize,
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
            users: None,
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            max_handshaking: 256,
            idle_timeout: Duration::from_secs(300),
            max_bytes_in_flight_per_connection: 256 << 20,
            max_topics_per_principal: 10_000,
            max_groups_per_principal: 10_000,
            max_response_bytes: 4 << 20,
        }
    }
}
