//! The client's side of the SCRAM-SHA-256 exchange, run on a new connection before its reader
//! and writer tasks start.

use tokio::io::{AsyncRead, AsyncWrite};

use super::error::{ClientError, Result};
use super::security::Credentials;
use crate::protocol::scram::{self, MIN_ITERATIONS};
use crate::protocol::{
    AuthFinish, AuthStart, ErrorReply, Frame, FrameKind, FrameReader, FrameWriter, Request,
    Response,
};

/// Authenticates as `credentials` with request ids 1 and 2.
pub(crate) async fn login<R, W>(
    addr: &str,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    credentials: &Credentials,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client_nonce = scram::nonce();
    let start = Request::AuthStart(AuthStart {
        user: credentials.user().to_string(),
        client_nonce: client_nonce.to_vec().into(),
    });
    let Response::AuthChallenge(challenge) = exchange(addr, reader, writer, 1, &start).await?
    else {
        return Err(ClientError::UnexpectedResponse("auth_start"));
    };
    let refuse = |reason: String| ClientError::Security {
        addr: addr.to_string(),
        reason,
    };
    // A broker that weakens the hash or drops our nonce is not to be trusted with a proof.
    if challenge.iterations < MIN_ITERATIONS {
        return Err(refuse(format!(
            "the broker asked for {} PBKDF2 iterations, fewer than the minimum {MIN_ITERATIONS}",
            challenge.iterations
        )));
    }
    if !challenge.nonce.starts_with(&client_nonce) || challenge.nonce.len() <= client_nonce.len() {
        return Err(refuse(
            "the broker's authentication challenge does not extend this client's nonce".into(),
        ));
    }
    let message = scram::auth_message(credentials.user(), &client_nonce, &challenge);
    let (proof, expected) = scram::client_proof(credentials.password(), &challenge, &message);
    let finish = Request::AuthFinish(AuthFinish {
        proof: proof.to_vec().into(),
    });
    let Response::AuthDone(done) = exchange(addr, reader, writer, 2, &finish).await? else {
        return Err(ClientError::UnexpectedResponse("auth_finish"));
    };
    if !scram::equal(&done.server_signature, &expected) {
        return Err(refuse(
            "the broker could not prove it holds this user's keys: it is not the broker \
             configured for these credentials"
                .into(),
        ));
    }
    Ok(())
}

/// Writes one request and reads its answer.
async fn exchange<R, W>(
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
    writer
        .write_frame(&frame)
        .await
        .map_err(|e| lost(format!("write failed during authentication: {e}")))?;
    writer
        .flush()
        .await
        .map_err(|e| lost(format!("write failed during authentication: {e}")))?;
    let answer = reader
        .read_frame()
        .await
        .map_err(|e| lost(format!("during authentication: {e}")))?
        .ok_or_else(|| lost("closed by the broker during authentication".into()))?;
    match answer.kind {
        FrameKind::Error => Err(ClientError::Server(ErrorReply::decode(answer.body)?)),
        FrameKind::Response if answer.request_id == request_id => {
            Ok(Response::decode(code, answer.body)?)
        }
        _ => Err(ClientError::UnexpectedResponse(request.code().name())),
    }
}
