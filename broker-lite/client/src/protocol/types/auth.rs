//! The SCRAM-SHA-256 exchange of [`CommandCode::AuthStart`] and [`CommandCode::AuthFinish`]
//! (issue 16): the password never crosses the wire, and neither side's messages can be replayed.
//!
//! [`CommandCode::AuthStart`]: crate::protocol::CommandCode::AuthStart
//! [`CommandCode::AuthFinish`]: crate::protocol::CommandCode::AuthFinish

use bytes::{BufMut, Bytes, BytesMut};

use super::Wire;
use crate::protocol::error::DecodeError;
use crate::protocol::wire::*;

/// The client's first message: who it claims to be and its fresh nonce.
///
/// ```
/// use broker_lite_client::protocol::{AuthStart, Request};
///
/// let start = Request::AuthStart(AuthStart { user: "orders".into(), client_nonce: vec![7; 24].into() });
/// assert_eq!(start.code().name(), "auth_start");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthStart {
    /// The user name.
    pub user: String,
    /// At least 16 random bytes, new for every connection.
    pub client_nonce: Bytes,
}

/// The broker's challenge: the user's salt and iteration count, and the combined nonce (the
/// client's nonce followed by the broker's).
///
/// ```
/// use broker_lite_client::protocol::AuthChallenge;
///
/// let c = AuthChallenge { salt: vec![1; 16].into(), iterations: 4096, nonce: vec![2; 48].into() };
/// assert_eq!(c.iterations, 4096);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChallenge {
    /// The salt the broker hashed the password with.
    pub salt: Bytes,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Client nonce followed by the server nonce.
    pub nonce: Bytes,
}

/// The client's proof that it knows the password (SCRAM's `ClientProof`).
///
/// ```
/// use broker_lite_client::protocol::AuthFinish;
///
/// let f = AuthFinish { proof: vec![0; 32].into() };
/// assert_eq!(f.proof.len(), 32);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFinish {
    /// `ClientKey XOR HMAC(StoredKey, AuthMessage)`.
    pub proof: Bytes,
}

/// The broker's proof that it holds the user's keys (SCRAM's `ServerSignature`), which the
/// client checks before it trusts the connection.
///
/// ```
/// use broker_lite_client::protocol::AuthDone;
///
/// let d = AuthDone { server_signature: vec![0; 32].into() };
/// assert_eq!(d.server_signature.len(), 32);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthDone {
    /// `HMAC(ServerKey, AuthMessage)`.
    pub server_signature: Bytes,
}

impl Wire for AuthStart {
    fn put(&self, buf: &mut BytesMut) {
        put_str(buf, &self.user);
        put_bytes(buf, &self.client_nonce);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(AuthStart {
            user: get_str(buf, "user")?,
            client_nonce: get_bytes(buf, "client nonce")?,
        })
    }
}

impl Wire for AuthChallenge {
    fn put(&self, buf: &mut BytesMut) {
        put_bytes(buf, &self.salt);
        buf.put_u32(self.iterations);
        put_bytes(buf, &self.nonce);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(AuthChallenge {
            salt: get_bytes(buf, "salt")?,
            iterations: get_u32(buf, "iterations")?,
            nonce: get_bytes(buf, "nonce")?,
        })
    }
}

impl Wire for AuthFinish {
    fn put(&self, buf: &mut BytesMut) {
        put_bytes(buf, &self.proof);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(AuthFinish {
            proof: get_bytes(buf, "client proof")?,
        })
    }
}

impl Wire for AuthDone {
    fn put(&self, buf: &mut BytesMut) {
        put_bytes(buf, &self.server_signature);
    }

    fn get(buf: &mut Bytes) -> Result<Self, DecodeError> {
        Ok(AuthDone {
            server_signature: get_bytes(buf, "server signature")?,
        })
    }
}
