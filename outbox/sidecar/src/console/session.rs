//! Session cookies that outlive the sidecar: a cookie carries its operator's name, its expiry
//! and a random id, signed with HMAC-SHA256 under a key derived from the console token. Nothing
//! is stored to check one, so a restarted sidecar (or a second one with the same token) accepts
//! the sessions of the first; changing the token signs everyone out.
//!
//! A sign-out revokes the cookie's id until it would have expired anyway. The revocations are
//! kept in memory and in the audit table (each sign-out's entry names the id), from which a
//! restarted console reads them back before it accepts a cookie (see `Console::read_sign_outs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use ring::hmac;

/// How long a sign-in lasts.
pub(crate) const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Marks the key's purpose, so that it is never the plain HMAC of the token over anything else.
const KEY_LABEL: &[u8] = b"courier console session key v1";

/// A checked session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The operator's name given at sign-in.
    pub(crate) who: String,
    /// Random, not secret: the signature is what makes a cookie valid.
    pub(crate) id: String,
    /// Unix seconds.
    expires: i64,
}

/// Issues and checks session cookies.
pub(crate) struct Sessions {
    /// `None` without a console token: there is nothing to sign in with.
    key: Option<hmac::Key>,
    /// Signed-out ids -> their expiry (Unix seconds).
    revoked: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// The sessions signed under a key derived from `token`.
    pub(crate) fn new(token: Option<&str>) -> Self {
        let key = token.map(|token| {
            let derived = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes()),
                KEY_LABEL,
            );
            hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
        });
        Self {
            key,
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// A cookie value for `who`, signed in at `now` (Unix seconds); `None` without a token.
    pub(crate) fn issue(&self, who: &str, now: i64) -> Option<String> {
        let key = self.key.as_ref()?;
        let id = hex::encode(rand::rng().random::<[u8; 16]>());
        let expires = now + LIFETIME.as_secs() as i64;
        let payload = format!("{expires}.{id}.{}", hex::encode(who));
        let signature = hex::encode(hmac::sign(key, payload.as_bytes()));
        Some(format!("{payload}.{signature}"))
    }

    /// The session of cookie `value` at `now`, if it is signed with this key, not expired and
    /// not signed out.
    pub(crate) fn check(&self, value: &str, now: i64) -> Option<Session> {
        let key = self.key.as_ref()?;
        let (payload, signature) = value.rsplit_once('.')?;
        // Constant-time comparison (ring), so a forger learns nothing from the timing.
        hmac::verify(key, payload.as_bytes(), &hex::decode(signature).ok()?).ok()?;
        let mut parts = payload.splitn(3, '.');
        let expires: i64 = parts.next()?.parse().ok()?;
        let id = parts.next()?.to_owned();
        let who = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
        if now >= expires {
            return None;
        }
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, until| *until > now);
        if revoked.contains_key(&id) {
            return None;
        }
        Some(Session { who, id, expires })
    }

    /// Signs `session` out: its cookie is refused from now on.
    pub(crate) fn revoke(&self, session: &Session) {
        self.revoke_id(&session.id, session.expires);
    }

    /// Refuses the cookie with id `id` until `until` (Unix seconds), when it expires anyway.
    pub(crate) fn revoke_id(&self, id: &str, until: i64) {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_cookie_is_accepted_after_a_restart_with_the_same_token() {
        let cookie = Sessions::new(Some("s3cret")).issue("alice", NOW).unwrap();
        let restarted = Sessions::new(Some("s3cret"));
        assert_eq!(restarted.check(&cookie, NOW + 60).unwrap().who, "alice");
        assert_eq!(Sessions::new(Some("other")).check(&cookie, NOW), None);
        assert_eq!(Sessions::new(None).check(&cookie, NOW), None);
        assert!(!cookie.contains("alice"), "the name is hex: {cookie}");
    }

    #[test]
    fn a_changed_or_expired_cookie_is_refused() {
        let sessions = Sessions::new(Some("s3cret"));
        let cookie = sessions.issue("alice", NOW).unwrap();
        let expiry = NOW + LIFETIME.as_secs() as i64;
        assert!(sessions.check(&cookie, expiry - 1).is_some());
        assert_eq!(sessions.check(&cookie, expiry), None);
        // Another name or expiry under the same signature.
        let (payload, signature) = cookie.rsplit_once('.').unwrap();
        let (_, rest) = payload.split_once('.').unwrap();
        let later = format!("{}.{rest}.{signature}", expiry + 3600);
        assert_eq!(sessions.check(&later, NOW), None);
        let (head, _) = payload.rsplit_once('.').unwrap();
        let mallory = format!("{head}.{}.{signature}", hex::encode("mallory"));
        assert_eq!(sessions.check(&mallory, NOW), None);
        assert_eq!(sessions.check("garbage", NOW), None);
        assert_eq!(sessions.check("1.2.3.zz", NOW), None);
    }

    #[test]
    fn a_signed_out_cookie_is_refused_and_others_are_not() {
        let sessions = Sessions::new(Some("s3cret"));
        let first = sessions.issue("alice", NOW).unwrap();
        let second = sessions.issue("alice", NOW).unwrap();
        let session = sessions.check(&first, NOW).unwrap();
        sessions.revoke(&session);
        assert_eq!(sessions.check(&first, NOW), None);
        assert!(sessions.check(&second, NOW).is_some());
        // Read back after a restart, from the sign-out's audit entry.
        let restarted = Sessions::new(Some("s3cret"));
        restarted.revoke_id(&session.id, NOW + 60);
        assert_eq!(restarted.check(&first, NOW), None);
        assert!(restarted.check(&second, NOW).is_some());
    }

    #[test]
    fn the_key_is_never_printed() {
        let sessions = Sessions::new(Some("s3cret"));
        assert!(!format!("{sessions:?}").contains('['));
    }
}
