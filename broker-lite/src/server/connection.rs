//! One client connection: a reader loop, and a task per request that writes its own answer
//! (see the `answers` module).

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::admission::{Slot, Ticket};
use super::answers::Answers;
use super::authz::authorize;
use super::config::ServerConfig;
use super::handler::Handler;
use super::handshake::{self, Handshake, Refusal};
use super::tls::ServerTls;
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

/// Serves one accepted TCP connection: TLS when configured, the handshake, then requests until
/// the peer closes it, it misbehaves, it idles, or the server stops.
pub(super) async fn serve_tcp<H: Handler>(
    stream: TcpStream,
    ticket: Ticket,
    handler: H,
    config: Arc<ServerConfig>,
    stop: Stop,
) {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let Some(tls) = config.tls.clone() else {
        let (rd, wr) = stream.into_split();
        admit(rd, wr, deadline, ticket, handler, config, stop).await;
        return;
    };
    let accepted = tokio::select! {
        biased;
        _ = stop.graceful.cancelled() => return,
        _ = ticket.evicted() => return,
        accepted = tokio::time::timeout_at(deadline, accept_tls(stream, &tls)) => accepted,
    };
    match accepted {
        Ok(Some(stream)) => {
            let (rd, wr) = tokio::io::split(stream);
            admit(rd, wr, deadline, ticket, handler, config, stop).await;
        }
        Ok(None) => {}
        Err(_) => debug!("no TLS handshake within the handshake timeout; closing"),
    }
}

/// The TLS handshake; a peer that speaks plain broker-lite gets a plain error frame saying so.
async fn accept_tls(
    stream: TcpStream,
    tls: &ServerTls,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match ServerTls::speaks_tls(&stream).await? {
        true => match tls.acceptor().accept(stream).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                warn!(error = %e, "TLS handshake failed");
                metrics::counter!("broker_lite_server_tls_failures_total").increment(1);
                None
            }
        },
        false => {
            let reply = ErrorReply::new(
                ErrorCode::Unauthenticated,
                "this broker requires TLS: connect with TLS (the client's Security::tls, or \
                 BROKER_LITE_TLS_CA with the CA that signed the broker's certificate)",
            );
            handshake::refuse(&mut FrameWriter::new(stream), &reply).await;
            None
        }
    }
}

/// Runs the handshake within `deadline`, takes a connection slot, then serves requests.
async fn admit<H, R, W>(
    rd: R,
    wr: W,
    deadline: tokio::time::Instant,
    ticket: Ticket,
    handler: H,
    config: Arc<ServerConfig>,
    stop: Stop,
) where
    H: Handler,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = FrameReader::new(rd, config.limits.max_frame_size);
    let mut writer = FrameWriter::new(wr);
    let users = config.users.as_deref();
    let outcome = tokio::select! {
        biased;
        _ = stop.graceful.cancelled() => Err(Refusal::Reply(ErrorReply::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down; try another address",
        ))),
        _ = ticket.evicted() => Err(Refusal::Reply(ErrorReply::new(
            ErrorCode::TooManyConnections,
            "too many connections are in their handshake at once; this one waited longest \
             and is closed to make room; try again",
        ))),
        done = tokio::time::timeout_at(deadline, handshake::handshake(&mut reader, &mut writer, users)) => {
            done.unwrap_or_else(|_| Err(Refusal::Reply(ErrorReply::new(
                ErrorCode::Timeout,
                format!(
                    "no {} within the handshake timeout of {:?}; closing the connection",
                    if users.is_some() { "authentication" } else { "request" },
                    config.handshake_timeout
                ),
            ))))
        }
    };
    let done = match outcome {
        Ok(done) => done,
        Err(Refusal::Closed) => return,
        Err(Refusal::Reply(reply)) => {
            metrics::counter!("broker_lite_server_refused_connections_total").increment(1);
            handshake::refuse(&mut writer, &reply).await;
            return;
        }
    };
    let Some(slot) = ticket.establish().await else {
        warn!("connection limit reached and every connection is busy; refusing a connection");
        metrics::counter!("broker_lite_server_refused_connections_total").increment(1);
        let reply = ErrorReply::new(
            ErrorCode::TooManyConnections,
            format!(
                "the server's limit of {} connections is reached; try again later",
                config.max_connections
            ),
        );
        handshake::refuse(&mut writer, &reply).await;
        return;
    };
    metrics::counter!("broker_lite_server_connections_total").increment(1);
    metrics::gauge!("broker_lite_server_connections").increment(1.0);
    let handler = handler.connect_as(done.principal.clone());
    serve_stream(reader, writer, done, handler, config, stop, &slot).await;
    metrics::gauge!("broker_lite_server_connections").decrement(1.0);
    drop(slot);
}

async fn serve_stream<H, R, W>(
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    done: Handshake,
    handler: H,
    config: Arc<ServerConfig>,
    stop: Stop,
    slot: &Slot,
) where
    H: Handler,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Handshake { principal, first } = done;
    let mut first = first;
    let tx = Arc::new(Answers::new(writer));
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight_per_connection));
    let budget = config.max_bytes_in_flight_per_connection.max(1);
    let bytes = Arc::new(Semaphore::new(budget));
    let mut tasks = JoinSet::new();
    let mut active = tokio::time::Instant::now();

    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.graceful.cancelled() => break,
            permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
        };
        if tasks.is_empty() {
            slot.idle(active);
        } else {
            slot.busy();
        }
        let frame = match first.take() {
            Some(frame) => Ok(Some(frame)),
            None => tokio::select! {
                biased;
                _ = stop.graceful.cancelled() => break,
                _ = slot.evicted(), if tasks.is_empty() => {
                    let reply = ErrorReply::new(
                        ErrorCode::TooManyConnections,
                        format!(
                            "the server's limit of {} connections is reached and this one was \
                             idle longest: closed to make room (reconnect when needed)",
                            config.max_connections
                        ),
                    );
                    reject(&tx, CONNECTION_REQUEST_ID, 0, reply).await;
                    break;
                }
                // Reap finished request tasks so the set does not grow.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    active = tokio::time::Instant::now();
                    continue;
                }
                _ = tokio::time::sleep_until(active + config.idle_timeout), if tasks.is_empty() => {
                    let reply = ErrorReply::new(
                        ErrorCode::Timeout,
                        format!(
                            "no request for {:?} (the idle timeout); closing the connection",
                            config.idle_timeout
                        ),
                    );
                    reject(&tx, CONNECTION_REQUEST_ID, 0, reply).await;
                    break;
                }
                frame = reader.read_frame() => frame,
            },
        };
        active = tokio::time::Instant::now();
        slot.busy();
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
        let body_len = frame.body.len();
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
        if let Err(reply) = request
            .validate(&config.limits)
            .and_then(|()| authorize(&principal, &request))
        {
            reject(&tx, frame.request_id, frame.code, reply).await;
            continue;
        }
        // The request's bytes wait for room (back pressure on this connection only); the room
        // an answer may need is taken at once or refused, so that a long poll never holds up
        // this connection's other requests.
        let body = (body_len as u32).min(budget as u32);
        let held = tokio::select! {
            biased;
            _ = stop.graceful.cancelled() => break,
            held = bytes.clone().acquire_many_owned(body) => held.expect("never closed"),
        };
        let answer = answer_reserve(&request, config.limits.max_frame_size).min(budget as u32);
        let held = match bytes.clone().try_acquire_many_owned(answer) {
            Ok(mut reserve) => {
                reserve.merge(held);
                reserve
            }
            Err(_) => {
                let reply = ErrorReply::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "this connection holds {} of its {budget} bytes in flight \
                         (max_bytes_in_flight_per_connection); wait for answers before sending \
                         more large requests or pulls",
                        budget - bytes.available_permits()
                    ),
                );
                reject(&tx, frame.request_id, frame.code, reply).await;
                continue;
            }
        };
        let (handler, tx, config, shutdown) = (
            handler.clone(),
            tx.clone(),
            config.clone(),
            stop.graceful.clone(),
        );
        let request_id = frame.request_id;
        tasks.spawn(async move {
            let _permit = permit;
            let held = Some(held);
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
            tx.send(&frame).await;
            // The answer's bytes leave the budget once written, as its request's did.
            drop(held);
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
    // The connection ends once the answers are out; a peer that does not read them is cut off
    // at the hard stop.
    tokio::select! {
        _ = tx.close() => {}
        _ = stop.hard.cancelled() => {}
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

async fn reject<W: AsyncWrite + Unpin>(
    tx: &Answers<W>,
    request_id: u64,
    code: u16,
    reply: ErrorReply,
) {
    let command = CommandCode::from_u16(code).map_or("unknown", |c| c.name());
    warn!(request_id, command, error = %reply, "rejecting a request");
    metrics::counter!("broker_lite_server_rejected_requests_total", "code" => reply.code.to_string()).increment(1);
    tx.send(&error_frame(request_id, code, &reply)).await;
}

/// The room an answer to `request` may need beyond its own bytes: a frame for the answers
/// that carry messages, nothing for the small ones.
fn answer_reserve(request: &Request, max_frame_size: u32) -> u32 {
    match request {
        Request::Pull(_)
        | Request::DeadLetters { .. }
        | Request::LookupById(_)
        | Request::LookupByKey { .. } => max_frame_size,
        _ => 0,
    }
}
