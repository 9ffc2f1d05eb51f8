//! One client connection: a reader loop, a task per request, a writer task.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::config::ServerConfig;
use super::handler::Handler;
use crate::protocol::{
    CONNECTION_REQUEST_ID, CommandCode, DecodeError, ErrorCode, ErrorReply, Frame, FrameKind,
    FrameReader, FrameWriter, HEADER_LEN, ReadError, Request, Response,
};

/// Tokens that tell a connection to stop.
#[derive(Debug, Clone)]
pub(super) struct Stop {
    /// Stop reading new requests; finish those in flight.
    pub(super) graceful: CancellationToken,
    /// Abandon requests in flight.
    pub(super) hard: CancellationToken,
}

/// Serves one connection until the peer closes it, it misbehaves, or the server stops.
pub(super) async fn serve_connection<H: Handler>(
    stream: TcpStream,
    handler: H,
    config: Arc<ServerConfig>,
    stop: Stop,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    serve_stream(rd, wr, handler, config, stop).await;
}

async fn serve_stream<H, R, W>(rd: R, wr: W, handler: H, config: Arc<ServerConfig>, stop: Stop)
where
    H: Handler,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let handler = handler.connect();
    let (tx, rx) = mpsc::channel::<Frame>(256);
    let writer = tokio::spawn(write_loop(FrameWriter::new(wr), rx));
    let mut reader = FrameReader::new(rd, config.limits.max_frame_size);
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight_per_connection));
    let mut tasks = JoinSet::new();

    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.graceful.cancelled() => break,
            permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
        };
        let frame = tokio::select! {
            biased;
            _ = stop.graceful.cancelled() => break,
            // Reap finished request tasks so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            frame = reader.read_frame() => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(ReadError::Decode(e)) => {
                let code = match e {
                    DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
                    DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
                    _ => ErrorCode::MalformedFrame,
                };
                reject(
                    &tx,
                    CONNECTION_REQUEST_ID,
                    0,
                    ErrorReply::new(code, format!("{e}; closing the connection")),
                )
                .await;
                break;
            }
            Err(e) => {
                debug!(error = %e, "connection read failed");
                break;
            }
        };
        let oneway = match frame.kind {
            FrameKind::Request => false,
            FrameKind::Oneway => true,
            FrameKind::Response | FrameKind::Error => {
                let reply = ErrorReply::new(
                    ErrorCode::MalformedFrame,
                    "a client may only send requests; closing the connection",
                );
                reject(&tx, frame.request_id, frame.code, reply).await;
                break;
            }
        };
        let request = match Request::decode(frame.code, frame.body) {
            Ok(request) => request,
            Err(DecodeError::UnknownCommand(c)) => {
                let reply = ErrorReply::new(
                    ErrorCode::UnknownCommand,
                    format!("unknown command code {c}"),
                );
                reject(&tx, frame.request_id, frame.code, reply).await;
                continue;
            }
            Err(e) => {
                let reply = ErrorReply::new(
                    ErrorCode::MalformedFrame,
                    format!("malformed request body: {e}; closing the connection"),
                );
                reject(&tx, frame.request_id, frame.code, reply).await;
                break;
            }
        };
        if let Err(reply) = request.validate(&config.limits) {
            reject(&tx, frame.request_id, frame.code, reply).await;
            continue;
        }
        let (handler, tx, config, shutdown) = (
            handler.clone(),
            tx.clone(),
            config.clone(),
            stop.graceful.clone(),
        );
        let request_id = frame.request_id;
        tasks.spawn(async move {
            let _permit = permit;
            let command = request.code();
            let started = Instant::now();
            let result = handle(&handler, request, &config, &shutdown).await;
            metrics::histogram!("broker_lite_server_request_seconds", "command" => command.name())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("broker_lite_server_requests_total", "command" => command.name()).increment(1);
            let frame = match result {
                Ok(_) if oneway => return,
                Ok(response) => {
                    let body = response.encode_body();
                    let limit = config.limits.max_frame_size as usize;
                    if body.len() + HEADER_LEN > limit {
                        // The peer would refuse the frame and drop the connection with every
                        // request on it; answer this request with an error instead. A
                        // `BrokerHandler` sizes pulls for the frame limit, so this is a
                        // handler's bug (a pull's deliveries would stay in flight).
                        warn!(command = command.name(), size = body.len(), limit,
                            "response exceeds the frame limit; deliveries of a pull stay in flight until the consume timeout");
                        let reply = ErrorReply::new(
                            ErrorCode::Internal,
                            format!(
                                "the response of {} bytes exceeds the frame limit of {limit} bytes; ask for fewer messages",
                                body.len()
                            ),
                        );
                        error_frame(request_id, command as u16, &reply)
                    } else {
                        Frame {
                            kind: FrameKind::Response,
                            request_id,
                            code: command as u16,
                            body,
                        }
                    }
                }
                Err(reply) => {
                    metrics::counter!("broker_lite_server_errors_total", "command" => command.name()).increment(1);
                    if oneway {
                        warn!(error = %reply, "one-way request failed; the sender is not told");
                        return;
                    }
                    error_frame(request_id, command as u16, &reply)
                }
            };
            let _ = tx.send(frame).await;
        });
    }

    // Tell the handler at once, not after the requests in flight (a long poll can run for a
    // while): a killed consumer's members leave their groups now.
    handler.disconnected().await;
    // Let the requests in flight finish, unless the server stops hard.
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
        _ = stop.hard.cancelled() => tasks.abort_all(),
    }
    drop(tx);
    // The writer ends once the answers are out; a peer that does not read them is cut off at
    // the hard stop.
    let mut writer = writer;
    tokio::select! {
        _ = &mut writer => {}
        _ = stop.hard.cancelled() => writer.abort(),
    }
}

async fn handle<H: Handler>(
    handler: &H,
    request: Request,
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> Result<Response, ErrorReply> {
    let Request::Pull(pull) = request else {
        return handler.handle(request).await;
    };
    // Long poll in slices, never cancelling a handler call: a pull dropped after it reserved
    // messages would leave them in flight until the consume timeout. Between slices, stop
    // waiting when shutdown begins.
    let slice = (config.long_poll_slice.as_millis() as u64).max(1);
    let mut remaining = pull
        .long_poll_ms
        .min(config.max_long_poll.as_millis() as u64);
    loop {
        let wait = remaining.min(slice);
        remaining -= wait;
        let mut part = pull.clone();
        part.long_poll_ms = wait;
        let result = handler.handle(Request::Pull(part)).await;
        match &result {
            Ok(Response::Pull(d)) if d.is_empty() && remaining > 0 && !shutdown.is_cancelled() => {
                continue;
            }
            _ => return result,
        }
    }
}

fn error_frame(request_id: u64, code: u16, reply: &ErrorReply) -> Frame {
    Frame {
        kind: FrameKind::Error,
        request_id,
        code,
        body: reply.encode(),
    }
}

async fn reject(tx: &mpsc::Sender<Frame>, request_id: u64, code: u16, reply: ErrorReply) {
    let command = CommandCode::from_u16(code).map_or("unknown", |c| c.name());
    warn!(request_id, command, error = %reply, "rejecting a request");
    metrics::counter!("broker_lite_server_rejected_requests_total", "code" => reply.code.to_string()).increment(1);
    let _ = tx.send(error_frame(request_id, code, &reply)).await;
}

/// Writes frames as they come, flushing whenever the queue runs dry; ends when every sender is gone.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::Receiver<Frame>,
) {
    while let Some(frame) = rx.recv().await {
        if writer.write_frame(&frame).await.is_err() {
            return;
        }
        if rx.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Sends one connection-level error frame and closes the stream (connection limit, shutdown).
pub(super) async fn refuse(stream: TcpStream, reply: ErrorReply) {
    let mut writer = FrameWriter::new(stream);
    let frame = error_frame(CONNECTION_REQUEST_ID, 0, &reply);
    if writer.write_frame(&frame).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}
