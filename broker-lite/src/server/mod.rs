//! The TCP server: accepts connections and answers [`protocol`](crate::protocol) frames.
//!
//! - **Per connection** a reader loop decodes frames and spawns one task per request, and a
//!   writer task sends the answers as they complete, so requests can be pipelined and a long-poll
//!   pull never holds up other requests on the same connection. At most
//!   [`ServerConfig::max_in_flight_per_connection`] requests run at once per connection.
//! - **Bad input**: a malformed or oversized frame (or an unparsable body) gets an error frame
//!   with a clear message ([`ErrorCode::MalformedFrame`](crate::protocol::ErrorCode),
//!   `FrameTooLarge`, `UnsupportedVersion`) and only that connection is closed. An unknown command
//!   or a request over the [`Limits`](crate::protocol::Limits) gets an error reply and the
//!   connection stays open.
//! - **Connection close ends memberships**: each connection has its own handler
//!   ([`Handler::connect`]); as soon as the server stops reading a connection (the peer closed
//!   it, which the kernel does for a killed process, or it broke) it calls
//!   [`Handler::disconnected`], before waiting for the requests still running. The broker's
//!   handler then removes every member that subscribed over that connection
//!   ([`Broker::close_session`](crate::broker::Broker::close_session)): its queues and in-flight
//!   messages go to the other members at once instead of after the heartbeat timeout. A client
//!   that reconnects subscribes again (the consumer client does so when a pull or heartbeat
//!   answers `NotFound`). A peer that only shuts down its write side counts as closed.
//! - **Security** (issue 16): with [`ServerConfig::users`] every connection authenticates
//!   (SCRAM-SHA-256, no reusable secret on the wire) before any other command, and each request
//!   is checked against the principal's [`Permissions`] (a refusal is a `Forbidden` error frame
//!   and changes nothing); receipts are signed and bound to the principal they were issued to.
//!   With [`ServerConfig::tls`] the listener speaks TLS only. Without users the broker runs
//!   open, which suits loopback; the server warns when it listens elsewhere without them.
//! - **Connection limits**: a connection must finish its handshake (TLS, authentication, or on
//!   an open broker its first request) within [`ServerConfig::handshake_timeout`]; at most
//!   [`ServerConfig::max_handshaking`] are in their handshake at once and the longest-waiting
//!   one makes room for a newcomer, so silent connections cannot lock clients out. When all
//!   [`ServerConfig::max_connections`] slots are taken, the established connection idle longest
//!   (no request in flight) is closed with a `TooManyConnections` error frame to make room, so
//!   idle ones cannot either; only when every connection is busy does a new one get that
//!   error. One idle for [`ServerConfig::idle_timeout`] is closed.
//!   Request and answer bytes per connection are bounded by
//!   [`ServerConfig::max_bytes_in_flight_per_connection`], and the topics and consumer groups
//!   each principal may create by [`ServerConfig::max_topics_per_principal`] and
//!   [`ServerConfig::max_groups_per_principal`] (a refusal is a `LimitExceeded` error frame).
//! - **Graceful shutdown**: when the `shutdown` future completes the server stops accepting,
//!   connections stop reading, long polls answer with no deliveries after their current slice
//!   ([`ServerConfig::long_poll_slice`]), and requests in flight get
//!   [`ServerConfig::shutdown_grace`] to finish and be answered; then everything is closed.
//!
//! Metrics: `broker_lite_server_connections` (gauge), `broker_lite_server_connections_total`,
//! `broker_lite_server_refused_connections_total`, `broker_lite_server_requests_total{command}`,
//! `broker_lite_server_errors_total{command}`, `broker_lite_server_rejected_requests_total{code}`,
//! `broker_lite_server_request_seconds{command}`.

mod admission;
mod answers;
mod authz;
pub(crate) mod broker;
mod config;
mod connection;
mod handler;
mod handshake;
mod principal;
mod quota;
mod tls;
mod users;
mod wire;

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

pub use broker::BrokerHandler;
pub use config::ServerConfig;
pub use handler::Handler;
pub use principal::{Permissions, Principal};
pub use tls::{ServerTls, TlsError};
pub use users::Users;

use admission::Admission;
use connection::Stop;

/// Serves `broker` on `listener` until `shutdown` completes, then shuts down gracefully.
///
/// The broker is not closed: the caller owns it (see [`embedded`](crate::embedded) for the
/// whole lifecycle).
///
/// # Errors
///
/// Only if reading the listener's local address fails.
pub async fn run(
    listener: TcpListener,
    broker: crate::broker::Broker,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let handler = BrokerHandler::new(broker)
        .with_max_frame_size(config.limits.max_frame_size)
        .with_max_response_bytes(config.max_response_bytes)
        .with_security(broker::SecuritySummary {
            authentication: config.users.is_some(),
            tls: config.tls.is_some(),
            listen: addr.to_string(),
        })
        .with_quotas(
            config.max_topics_per_principal,
            config.max_groups_per_principal,
        );
    serve(listener, handler, config, shutdown).await
}

/// Serves `listener` with `handler` until `shutdown` completes, then shuts down gracefully.
///
/// # Errors
///
/// Only if reading the listener's local address fails; accept errors are logged and retried.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, max_connections = config.max_connections, "broker-lite server listening");
    if config.users.is_none() && !addr.ip().is_loopback() {
        warn!(%addr, "broker-lite listens on a non-loopback address without authentication: \
            anyone who can reach it can send, consume, ack and administer; configure users \
            (and TLS)");
    } else if config.tls.is_none() && !addr.ip().is_loopback() {
        warn!(%addr, "broker-lite listens on a non-loopback address without TLS: traffic, \
            messages included, can be read on the network");
    }
    let config = Arc::new(config);
    let admission = Admission::new(config.max_handshaking, config.max_connections);
    let stop = Stop {
        graceful: CancellationToken::new(),
        hard: CancellationToken::new(),
    };
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Too many open files and the like: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ticket = admission.arrive();
        let (handler, config, stop) = (handler.clone(), config.clone(), stop.clone());
        let span = tracing::debug_span!("connection", %peer);
        tracker.spawn(
            async move {
                tracing::debug!("connection opened");
                connection::serve_tcp(stream, ticket, handler, config, stop).await;
                tracing::debug!("connection closed");
            }
            .instrument(span),
        );
    }

    drop(listener);
    info!(%addr, grace = ?config.shutdown_grace, "broker-lite server shutting down");
    stop.graceful.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!("requests still in flight after the shutdown grace period; abandoning them");
        stop.hard.cancel();
        tracker.wait().await;
    }
    info!(%addr, "broker-lite server stopped");
    Ok(())
}
