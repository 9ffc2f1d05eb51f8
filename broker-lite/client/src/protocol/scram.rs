//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) in the form broker-lite's two auth commands carry it.
//!
//! The broker keeps, per user, a salt, an iteration count and two keys derived from the
//! password ([`ScramKeys`]); never the password. The client proves it knows the password
//! without sending it, and the broker proves it holds the keys, so a captured exchange cannot
//! be replayed (both nonces are fresh) and a fake broker learns nothing it can reuse.
//!
//! ```
//! use broker_lite_client::protocol::AuthChallenge;
//! use broker_lite_client::protocol::scram::{self, ScramKeys};
//!
//! // Broker side, once: keep only the salt, the iterations and the keys.
//! let salt = scram::nonce();
//! let keys = ScramKeys::derive(b"s3cret", &salt, 4096);
//!
//! // One exchange.
//! let client_nonce = scram::nonce();
//! let mut nonce = client_nonce.to_vec();
//! nonce.extend_from_slice(&scram::nonce());
//! let challenge = AuthChallenge { salt: salt.to_vec().into(), iterations: 4096, nonce: nonce.into() };
//! let message = scram::auth_message("orders", &client_nonce, &challenge);
//! let (proof, expected) = scram::client_proof(b"s3cret", &challenge, &message);
//! assert!(keys.verify_proof(&message, &proof));
//! assert_eq!(keys.server_signature(&message), expected);
//! assert!(!keys.verify_proof(&message, &scram::client_proof(b"guess", &challenge, &message).0));
//! ```

use std::num::NonZeroU32;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq;

use super::types::AuthChallenge;

/// Length of each side's nonce and of the salt, in bytes.
pub const NONCE_LEN: usize = 24;

/// The fewest PBKDF2 iterations either side accepts (RFC 7677's minimum).
pub const MIN_ITERATIONS: u32 = 4096;

/// Fresh random bytes from the operating system, for nonces and salts.
///
/// ```
/// let (a, b) = (broker_lite_client::protocol::scram::nonce(), broker_lite_client::protocol::scram::nonce());
/// assert_ne!(a, b);
/// ```
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut bytes = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    bytes
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message);
    tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(iterations.max(1)).expect("at least one");
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password,
        &mut out,
    );
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// What the broker stores for one user: SCRAM's `StoredKey` and `ServerKey`.
///
/// Its `Debug` output shows no key material.
///
/// ```
/// use broker_lite_client::protocol::scram::ScramKeys;
///
/// let keys = ScramKeys::derive(b"pw", b"salt-salt-salt-salt", 4096);
/// assert!(!format!("{keys:?}").contains(&format!("{:?}", b"pw")));
/// ```
#[derive(Clone)]
pub struct ScramKeys {
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

impl ScramKeys {
    /// Derives the keys of `password` under `salt` with `iterations` rounds of PBKDF2.
    ///
    /// ```
    /// use broker_lite_client::protocol::scram::ScramKeys;
    /// let _ = ScramKeys::derive(b"pw", b"0123456789abcdef", 4096);
    /// ```
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = salted_password(password, salt, iterations);
        ScramKeys {
            stored_key: sha256(&hmac(&salted, b"Client Key")),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Whether `proof` shows knowledge of the password for this `auth_message`, compared in
    /// constant time.
    ///
    /// ```
    /// # use broker_lite_client::protocol::scram::ScramKeys;
    /// let keys = ScramKeys::derive(b"pw", b"0123456789abcdef", 4096);
    /// assert!(!keys.verify_proof(b"message", &[0; 32]));
    /// ```
    pub fn verify_proof(&self, auth_message: &[u8], proof: &[u8]) -> bool {
        if proof.len() != 32 {
            return false;
        }
        let signature = hmac(&self.stored_key, auth_message);
        let mut client_key = [0u8; 32];
        for (i, byte) in client_key.iter_mut().enumerate() {
            *byte = proof[i] ^ signature[i];
        }
        sha256(&client_key).ct_eq(&self.stored_key).into()
    }

    /// SCRAM's `ServerSignature` for `auth_message`.
    ///
    /// ```
    /// # use broker_lite_client::protocol::scram::ScramKeys;
    /// let keys = ScramKeys::derive(b"pw", b"0123456789abcdef", 4096);
    /// assert_eq!(keys.server_signature(b"m").len(), 32);
    /// ```
    pub fn server_signature(&self, auth_message: &[u8]) -> [u8; 32] {
        hmac(&self.server_key, auth_message)
    }
}

/// The bytes both sides sign: user, both nonces, salt and iterations, each length-prefixed so
/// that no two exchanges share one.
///
/// ```
/// use broker_lite_client::protocol::{AuthChallenge, scram};
/// let c = AuthChallenge { salt: vec![1].into(), iterations: 4096, nonce: vec![2, 3].into() };
/// assert_ne!(scram::auth_message("a", &[2], &c), scram::auth_message("b", &[2], &c));
/// ```
pub fn auth_message(user: &str, client_nonce: &[u8], challenge: &AuthChallenge) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + user.len() + challenge.nonce.len());
    m.extend_from_slice(b"broker-lite SCRAM-SHA-256 v1");
    for part in [
        user.as_bytes(),
        client_nonce,
        &challenge.nonce,
        &challenge.salt,
        &challenge.iterations.to_be_bytes(),
    ] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// The client's side: its proof and the server signature it must receive back.
///
/// ```
/// use broker_lite_client::protocol::{AuthChallenge, scram};
/// let c = AuthChallenge { salt: vec![1; 16].into(), iterations: 4096, nonce: vec![2; 48].into() };
/// let (proof, server) = scram::client_proof(b"pw", &c, b"message");
/// assert_ne!(proof, server);
/// ```
pub fn client_proof(
    password: &[u8],
    challenge: &AuthChallenge,
    auth_message: &[u8],
) -> ([u8; 32], [u8; 32]) {
    let salted = salted_password(password, &challenge.salt, challenge.iterations);
    let client_key = hmac(&salted, b"Client Key");
    let signature = hmac(&sha256(&client_key), auth_message);
    let mut proof = [0u8; 32];
    for (i, byte) in proof.iter_mut().enumerate() {
        *byte = client_key[i] ^ signature[i];
    }
    let server_key = hmac(&salted, b"Server Key");
    (proof, hmac(&server_key, auth_message))
}

/// Whether `a` and `b` are equal, compared in constant time (for server signatures).
///
/// ```
/// assert!(broker_lite_client::protocol::scram::equal(b"ab", b"ab"));
/// assert!(!broker_lite_client::protocol::scram::equal(b"ab", b"ac"));
/// ```
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
