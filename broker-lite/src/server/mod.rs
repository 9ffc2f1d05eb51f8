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
//! - **Connection limit**: past [`ServerConfig::max_connections`] a new connection gets a
//!   `TooManyConnections` error frame and is closed.
//! - **Graceful shutdown**: when the `shutdown` future completes the server stops accepting,
//!   connections stop reading, long polls answer with no deliveries after their current slice
//!   ([`ServerConfig::long_poll_slice`]), and requests in flight get
//!   [`ServerConfig::shutdown_grace`] to finish and be answered; then everything is closed.
//!
//! Metrics: `broker_lite_server_connections` (gauge), `broker_lite_server_connections_total`,
//! `broker_lite_server_refused_connections_total`, `broker_lite_server_requests_total{command}`,
//! `broker_lite_server_errors_total{command}`, `broker_lite_server_rejected_requests_total{code}`,
//! `broker_lite_server_request_seconds{command}`.

mod broker;
mod config;
mod connection;
mod handler;

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

pub use broker::BrokerHandler;
pub use config::ServerConfig;
pub use handler::Handler;

use crate::protocol::{ErrorCode, ErrorReply};
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
    let handler = BrokerHandler::new(broker).with_max_frame_size(config.limits.max_frame_size);
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
    let config = Arc::new(config);
    let limit = Arc::new(Semaphore::new(config.max_connections));
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, "connection limit reached; refusing a connection");
            metrics::counter!("broker_lite_server_refused_connections_total").increment(1);
            let reply = ErrorReply::new(
                ErrorCode::TooManyConnections,
                format!(
                    "the server's limit of {} connections is reached; try again later",
                    config.max_connections
                ),
            );
            tracker.spawn(connection::refuse(stream, reply));
            continue;
        };
        metrics::counter!("broker_lite_server_connections_total").increment(1);
        metrics::gauge!("broker_lite_server_connections").increment(1.0);
        let (handler, config, stop) = (handler.clone(), config.clone(), stop.clone());
        let span = tracing::debug_span!("connection", %peer);
        tracker.spawn(
            async move {
                tracing::debug!("connection opened");
                connection::serve_connection(stream, handler, config, stop).await;
                metrics::gauge!("broker_lite_server_connections").decrement(1.0);
                tracing::debug!("connection closed");
                drop(permit);
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
