//! The broker's user table: per user a salt, an iteration count, the SCRAM keys derived from
//! the password (never the password) and the user's permissions.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::protocol::scram::{self, MIN_ITERATIONS, ScramKeys};

use super::principal::{Permissions, Principal};

/// One user's stored credentials.
#[derive(Debug, Clone)]
pub(super) struct UserEntry {
    pub(super) salt: [u8; scram::NONCE_LEN],
    pub(super) iterations: u32,
    pub(super) keys: ScramKeys,
    pub(super) principal: Arc<Principal>,
}

/// The users a broker accepts. With a [`Users`] table in
/// [`ServerConfig::users`](super::ServerConfig::users), every connection must authenticate
/// (SCRAM-SHA-256) before any other command.
///
/// ```
/// use broker_lite::server::{Permissions, Users};
///
/// let mut users = Users::new();
/// let mut rights = Permissions::default();
/// rights.produce = vec!["orders".into()];
/// users.add("orders", b"s3cret", rights);
/// assert_eq!(users.len(), 1);
/// assert!(!format!("{users:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct Users {
    users: HashMap<String, UserEntry>,
    iterations: u32,
    /// Answers challenges for unknown users with a stable fake salt, so that the exchange does
    /// not tell which user names exist.
    decoy_key: [u8; scram::NONCE_LEN],
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.users.keys().collect();
        names.sort();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

impl Default for Users {
    fn default() -> Self {
        Users::new()
    }
}

impl Users {
    /// An empty table hashing passwords with [`MIN_ITERATIONS`] rounds of PBKDF2.
    pub fn new() -> Self {
        Users {
            users: HashMap::new(),
            iterations: MIN_ITERATIONS,
            decoy_key: scram::nonce(),
        }
    }

    /// Hashes the passwords added after this with `iterations` rounds (at least
    /// [`MIN_ITERATIONS`]; clients refuse fewer).
    pub fn with_iterations(mut self, iterations: u32) -> Self {
        self.iterations = iterations.max(MIN_ITERATIONS);
        self
    }

    /// Adds (or replaces) the user `name` with `password` and `permissions`. The password is
    /// hashed with a fresh salt and dropped.
    pub fn add(&mut self, name: impl Into<String>, password: &[u8], permissions: Permissions) {
        let name = name.into();
        let salt = scram::nonce();
        let entry = UserEntry {
            salt,
            iterations: self.iterations,
            keys: ScramKeys::derive(password, &salt, self.iterations),
            principal: Arc::new(Principal::new(name.clone(), permissions)),
        };
        self.users.insert(name, entry);
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub(super) fn get(&self, name: &str) -> Option<&UserEntry> {
        self.users.get(name)
    }

    /// The salt shown for a user that does not exist: the same on every try.
    pub(super) fn decoy_salt(&self, name: &str) -> [u8; scram::NONCE_LEN] {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.decoy_key),
            name.as_bytes(),
        );
        tag.as_ref()[..scram::NONCE_LEN]
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }

    pub(super) fn iterations(&self) -> u32 {
        self.iterations
    }
}
