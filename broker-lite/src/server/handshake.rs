//! The start of every connection: with a [`Users`] table the SCRAM-SHA-256 exchange, without
//! one the first frame. Either must finish within the handshake timeout, so a silent
//! connection cannot hold a slot.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::principal::Principal;
use super::users::Users;
use crate::protocol::scram;
use crate::protocol::{
    AuthChallenge, AuthDone, CONNECTION_REQUEST_ID, DecodeError, ErrorCode, ErrorReply, Frame,
    FrameKind, FrameReader, FrameWriter, ReadError, Request, Response,
};

/// Why a connection ends during its handshake.
#[derive(Debug)]
pub(super) enum Refusal {
    /// The peer closed or the socket broke: nothing to say.
    Closed,
    /// Tell the peer why, then close.
    Reply(ErrorReply),
}

/// What a finished handshake gives the connection.
#[derive(Debug)]
pub(super) struct Handshake {
    pub(super) principal: Arc<Principal>,
    /// The first request of an open broker's connection, to be served as usual.
    pub(super) first: Option<Frame>,
}

/// Runs the handshake on a fresh connection.
pub(super) async fn handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    users: Option<&Users>,
) -> Result<Handshake, Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let first = next_frame(reader).await?;
    let Some(users) = users else {
        return Ok(Handshake {
            principal: Arc::new(Principal::anonymous()),
            first: Some(first),
        });
    };
    let start = match request(&first)? {
        Request::AuthStart(start) => start,
        other => {
            return Err(unauthenticated(format!(
                "authentication required before {}: this broker needs credentials (user and \
                 password, SCRAM-SHA-256); configure the client's security settings",
                other.code().name()
            )));
        }
    };
    if start.client_nonce.len() < 16 {
        return Err(unauthenticated(
            "the client nonce must be at least 16 random bytes".into(),
        ));
    }
    let user = users.get(&start.user);
    let (salt, iterations) = match user {
        Some(u) => (u.salt, u.iterations),
        None => (users.decoy_salt(&start.user), users.iterations()),
    };
    let mut nonce = start.client_nonce.to_vec();
    nonce.extend_from_slice(&scram::nonce());
    let challenge = AuthChallenge {
        salt: salt.to_vec().into(),
        iterations,
        nonce: nonce.into(),
    };
    let message = scram::auth_message(&start.user, &start.client_nonce, &challenge);
    answer(writer, &first, Response::AuthChallenge(challenge)).await?;

    let second = next_frame(reader).await?;
    let Request::AuthFinish(finish) = request(&second)? else {
        return Err(unauthenticated(
            "expected the second authentication step (auth_finish)".into(),
        ));
    };
    let Some(user) = user.filter(|u| u.keys.verify_proof(&message, &finish.proof)) else {
        metrics::counter!("broker_lite_server_auth_failures_total").increment(1);
        tracing::warn!(user = %start.user, "authentication failed");
        return Err(unauthenticated(format!(
            "authentication failed for user {:?}: wrong user name or password",
            start.user
        )));
    };
    let done = AuthDone {
        server_signature: user.keys.server_signature(&message).to_vec().into(),
    };
    answer(writer, &second, Response::AuthDone(done)).await?;
    tracing::debug!(user = %start.user, "authenticated");
    Ok(Handshake {
        principal: user.principal.clone(),
        first: None,
    })
}

fn unauthenticated(message: String) -> Refusal {
    Refusal::Reply(ErrorReply::new(ErrorCode::Unauthenticated, message))
}

async fn next_frame<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Result<Frame, Refusal> {
    match reader.read_frame().await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) | Err(ReadError::Io(_) | ReadError::Truncated) => Err(Refusal::Closed),
        Err(ReadError::Decode(e)) => {
            let code = match e {
                DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
                DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
                _ => ErrorCode::MalformedFrame,
            };
            Err(Refusal::Reply(ErrorReply::new(
                code,
                format!("{e}; closing the connection"),
            )))
        }
        Err(e) => Err(Refusal::Reply(ErrorReply::new(
            ErrorCode::MalformedFrame,
            format!("{e}; closing the connection"),
        ))),
    }
}

fn request(frame: &Frame) -> Result<Request, Refusal> {
    if frame.kind != FrameKind::Request {
        return Err(unauthenticated(
            "authentication required: the first frames must be auth requests".into(),
        ));
    }
    Request::decode(frame.code, frame.body.clone()).map_err(|e| {
        Refusal::Reply(ErrorReply::new(
            ErrorCode::MalformedFrame,
            format!("malformed request during authentication: {e}; closing the connection"),
        ))
    })
}

async fn answer<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    to: &Frame,
    response: Response,
) -> Result<(), Refusal> {
    let frame = Frame {
        kind: FrameKind::Response,
        request_id: to.request_id,
        code: to.code,
        body: response.encode_body(),
    };
    writer
        .write_frame(&frame)
        .await
        .map_err(|_| Refusal::Closed)?;
    writer.flush().await.map_err(|_| Refusal::Closed)
}

/// Sends `reply` as a connection error and closes the write side.
pub(super) async fn refuse<W: AsyncWrite + Unpin>(writer: &mut FrameWriter<W>, reply: &ErrorReply) {
    tracing::debug!(error = %reply, "refusing a connection");
    let frame = Frame {
        kind: FrameKind::Error,
        request_id: CONNECTION_REQUEST_ID,
        code: 0,
        body: reply.encode(),
    };
    if writer.write_frame(&frame).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}
