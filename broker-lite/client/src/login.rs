//! The client's side of the SCRAM-SHA-256 exchange, run on a new connection before its reader
//! and writer tasks start.

use tokio::io::{AsyncRead, AsyncWrite};

use super::error::{ClientError, Result};
use super::handshake::exchange;
use super::security::Credentials;
use crate::protocol::scram::{self, MIN_ITERATIONS};
use crate::protocol::{AuthFinish, AuthStart, FrameReader, FrameWriter, Request, Response};

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
