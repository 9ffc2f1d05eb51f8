//! The requests a new connection makes before its reader and writer tasks start: the login on a
//! broker that wants credentials ([`login`](super::login)), a ping on an open one.
//!
//! An open broker closes a connection that sends no request within its handshake timeout
//! (10 s by default), so a client that connected and then waited longer than that for its first
//! send (a producer opened at start-up, a relay waiting for its tables) found its connection
//! closed and logged a warning. Pinging at once completes the handshake, and makes `connect`
//! fail with the broker's reason (credentials wanted, another server on the port) rather than
//! the first request after it.

use tokio::io::{AsyncRead, AsyncWrite};

use super::error::{ClientError, Result};
use crate::protocol::{
    ErrorReply, Frame, FrameKind, FrameReader, FrameWriter, ReadError, Request, Response,
};

/// The request id of the ping that opens a connection to an open broker.
pub(crate) const HELLO_REQUEST_ID: u64 = 1;

/// Completes an open broker's handshake with a ping.
pub(crate) async fn hello<R, W>(
    addr: &str,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match exchange(addr, reader, writer, HELLO_REQUEST_ID, &Request::Ping).await? {
        Response::Done => Ok(()),
        _ => Err(ClientError::UnexpectedResponse("ping")),
    }
}

/// Writes one request and reads its answer, before the connection's tasks run.
pub(crate) async fn exchange<R, W>(
    addr: &str,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    request_id: u64,
    request: &Request,
) -> Result<Response>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let code = request.code() as u16;
    let frame = Frame {
        kind: FrameKind::Request,
        request_id,
        code,
        body: request.encode_body(),
    };
    let lost = |reason: String| ClientError::ConnectionLost {
        addr: addr.to_string(),
        reason,
    };
    let phase = request.code().name();
    writer
        .write_frame(&frame)
        .await
        .map_err(|e| lost(format!("write failed during the handshake ({phase}): {e}")))?;
    writer
        .flush()
        .await
        .map_err(|e| lost(format!("write failed during the handshake ({phase}): {e}")))?;
    let answer = match reader.read_frame().await {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            return Err(lost(format!(
                "closed by the broker during the handshake ({phase})"
            )));
        }
        Err(ReadError::Decode(e)) => return Err(lost(super::connection::not_a_broker(&e))),
        Err(e) => return Err(lost(format!("during the handshake ({phase}): {e}"))),
    };
    match answer.kind {
        FrameKind::Error => Err(ClientError::Server(ErrorReply::decode(answer.body)?)),
        FrameKind::Response if answer.request_id == request_id => {
            Ok(Response::decode(code, answer.body)?)
        }
        _ => Err(ClientError::UnexpectedResponse(request.code().name())),
    }
}
