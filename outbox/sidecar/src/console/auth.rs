//! Who may change things: write actions (replay, purge, redrive) need the console token, sent as
//! `Authorization: Bearer <token>` or through the login form, which sets a signed session cookie
//! that outlives a restart of the sidecar and is revoked by signing out (see [`super::session`]). Without a
//! configured token they are allowed only when the sidecar listens on loopback (then only local
//! processes reach it); otherwise they are refused with a page that says how to configure one.
//! Every write, sign-in and sign-out is audit-logged with who did what (see [`super::audit`]).
//!
//! Reads are open on a loopback listener; on any other address every page but the login form
//! needs a sign-in too, because the pages show message payloads and headers.
//!
//! CSRF: writes are POSTs whose `Origin` (or, without it, `Referer`) must name this host; the
//! session cookie is `SameSite=Strict` and `HttpOnly`.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::audit::Entry;
use super::form::Fields;
use super::html::{self, esc};
use super::session::{LIFETIME, Session, Sessions};

/// The session cookie's name.
const COOKIE: &str = "courier_console";

/// The console's authentication state.
pub(crate) struct Auth {
    /// The token; never printed, compared in constant time.
    token: Option<String>,
    /// Listening on loopback with no token: writes are open.
    open_writes: bool,
    /// Not on loopback: the pages show payloads and headers, so reading needs a sign-in too.
    reads_need_sign_in: bool,
    /// The signed session cookies.
    sessions: Sessions,
    /// The sign-outs of the audit table are in `sessions`: until then no cookie is accepted,
    /// since it may have been signed out before a restart.
    sign_outs_read: AtomicBool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("open_writes", &self.open_writes)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `token` from the configuration; `loopback` when the listener is on a loopback address.
    pub(crate) fn new(token: Option<String>, loopback: bool) -> Self {
        let token = token.filter(|t| !t.trim().is_empty());
        Self {
            open_writes: token.is_none() && loopback,
            reads_need_sign_in: !loopback,
            sessions: Sessions::new(token.as_deref()),
            sign_outs_read: AtomicBool::new(false),
            token,
        }
    }

    /// The signed-in operator, from the bearer token or the session cookie.
    pub(crate) fn who(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(token) = &self.token {
            if let Some(bearer) =
                header_str(headers, header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "))
            {
                if same(bearer.trim(), token) {
                    let user = header_str(headers, "x-console-user").unwrap_or("bearer token");
                    return Some(format!("{user} (bearer)"));
                }
            }
        }
        self.session(headers).map(|session| session.who)
    }

    /// The session of the request's cookie, if it is valid.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        if !self.sign_outs_read.load(Ordering::Acquire) {
            return None;
        }
        self.sessions
            .check(cookie(headers)?, chrono::Utc::now().timestamp())
    }

    /// Takes the sign-outs read from the audit table: (when, the entry's filter,
    /// `session <id>`). From now on cookies are accepted.
    pub(crate) fn read_sign_outs(&self, sign_outs: &[(chrono::DateTime<chrono::Utc>, String)]) {
        for (at, filter) in sign_outs {
            if let Some(id) = filter.strip_prefix("session ") {
                // A session expires at most LIFETIME after it began, so before this.
                self.sessions
                    .revoke_id(id, at.timestamp() + LIFETIME.as_secs() as i64);
            }
        }
        self.sign_outs_read.store(true, Ordering::Release);
    }

    /// Whether this request may read the console's pages: always on loopback; elsewhere only
    /// signed in (bearer token or session), since the pages show message payloads and headers.
    pub(crate) fn may_read(&self, headers: &HeaderMap) -> bool {
        !self.reads_need_sign_in || self.who(headers).is_some()
    }

    /// Whether writes need no token (loopback, none configured).
    pub(crate) fn open_writes(&self) -> bool {
        self.open_writes
    }

    /// Who may perform a write request, or the refusal page: 403 for a cross-site request or a
    /// non-loopback console without a token, 401 without a valid token.
    pub(crate) fn authorize_write(&self, headers: &HeaderMap) -> Result<String, Box<Response>> {
        let bearer = header_str(headers, header::AUTHORIZATION).is_some();
        if !same_origin(headers, bearer) {
            return Err(Box::new(html::error(
                StatusCode::FORBIDDEN,
                "Refused: cross-site request",
                "This write request did not come from a console page (its Origin or Referer names \
                 another site, or neither is present). Open the console and use its buttons.",
            )));
        }
        if let Some(who) = self.who(headers) {
            return Ok(who);
        }
        if self.open_writes {
            return Ok("anonymous (loopback console without a token)".to_owned());
        }
        if self.token.is_none() {
            return Err(Box::new(html::error(
                StatusCode::FORBIDDEN,
                "Refused: no console token configured",
                "Write actions are disabled: the console listens on a non-loopback address and no \
                 token is configured. Set console.token_file in the config file or the \
                 OUTBOX_RELAY_CONSOLE_TOKEN environment variable, and restart the sidecar.",
            )));
        }
        Err(Box::new(unauthorized()))
    }

    /// `POST /console/login`: checks the token and sets the session cookie; the audit entry of
    /// the attempt, unless it was refused before a name was given (cross-site, no token).
    pub(crate) fn login(&self, headers: &HeaderMap, body: &str) -> (Response, Option<Entry>) {
        if !same_origin(headers, false) {
            let refused = html::error(
                StatusCode::FORBIDDEN,
                "Refused: cross-site request",
                "The login form must be sent from the console's own login page.",
            );
            return (refused, None);
        }
        let fields = Fields::parse(body);
        let name = fields.get("name").unwrap_or("operator");
        let Some(token) = &self.token else {
            let refused = html::error(
                StatusCode::FORBIDDEN,
                "No console token configured",
                "Sign-in needs a token: set console.token_file or OUTBOX_RELAY_CONSOLE_TOKEN.",
            );
            return (refused, None);
        };
        let who: String = name.chars().take(64).collect();
        if !fields.get("token").is_some_and(|given| same(given, token)) {
            let refused = (StatusCode::UNAUTHORIZED, login_page(Some("Wrong token.")));
            let entry = Entry::now(&who, "sign-in", "console").outcome("refused: wrong token");
            return (refused.into_response(), Some(entry));
        }
        let entry = Entry::now(&who, "sign-in", "console");
        // The key comes from the token checked above, so there is always one here.
        let value = self
            .sessions
            .issue(&who, chrono::Utc::now().timestamp())
            .unwrap_or_default();
        let response = (
            [(
                header::SET_COOKIE,
                format!(
                    "{COOKIE}={value}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict",
                    LIFETIME.as_secs()
                ),
            )],
            Redirect::to("/console"),
        )
            .into_response();
        (response, Some(entry))
    }

    /// `POST /console/logout`: revokes the session, clears its cookie and returns to the login
    /// form; the audit entry when there was a session to end.
    pub(crate) fn logout(&self, headers: &HeaderMap) -> (Response, Option<Entry>) {
        if !same_origin(headers, false) {
            let refused = html::error(
                StatusCode::FORBIDDEN,
                "Refused: cross-site request",
                "Sign out with the console's own button.",
            );
            return (refused, None);
        }
        let entry = self.session(headers).map(|session| {
            self.sessions.revoke(&session);
            // The id lets a restarted console refuse the cookie too.
            Entry::now(&session.who, "sign-out", "console")
                .filter(format!("session {}", session.id))
        });
        let response = (
            [(
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict"),
            )],
            Redirect::to("/console/login"),
        )
            .into_response();
        (response, entry)
    }
}

/// The 401 page, with the login form.
pub(crate) fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        login_page(Some(
            "Refused: this action needs the console token. Sign in below, or send \
             Authorization: Bearer <token>.",
        )),
    )
        .into_response()
}

/// The login form.
pub(crate) fn login_page(notice: Option<&str>) -> axum::response::Html<String> {
    let notice = notice.map_or(String::new(), |n| {
        format!("<p class=\"notice\" id=\"notice\">{}</p>", esc(n))
    });
    html::page(
        "Sign in",
        None,
        &format!(
            "{notice}<form method=\"post\" action=\"/console/login\">\
             <p><label>Your name <input name=\"name\" required></label></p>\
             <p><label>Console token <input name=\"token\" type=\"password\" required></label></p>\
             <button class=\"primary\" type=\"submit\">Sign in</button></form>"
        ),
    )
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The request came from a page of this host. A request with neither `Origin` nor `Referer`
/// passes only with a bearer token (a script, not a browser riding a cookie).
fn same_origin(headers: &HeaderMap, bearer: bool) -> bool {
    let Some(host) = header_str(headers, header::HOST) else {
        return false;
    };
    let ours = |value: &str| {
        ["http://", "https://"].iter().any(|scheme| {
            value
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix(host))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    };
    match (
        header_str(headers, header::ORIGIN),
        header_str(headers, header::REFERER),
    ) {
        (Some(origin), _) => ours(origin),
        (None, Some(referer)) => ours(referer),
        (None, None) => bearer,
    }
}

/// Constant-time equality, so that response times do not reveal the token.
fn same(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn writes_need_the_token_and_the_same_origin() {
        let auth = Auth::new(Some("s3cret".into()), true);
        let local = [
            ("host", "127.0.0.1:9400"),
            ("origin", "http://127.0.0.1:9400"),
        ];
        let refused = *auth.authorize_write(&headers(&local)).unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let mut with_token = local.to_vec();
        with_token.push(("authorization", "Bearer s3cret"));
        assert!(auth.authorize_write(&headers(&with_token)).is_ok());
        let cross = [
            ("host", "127.0.0.1:9400"),
            ("origin", "http://evil.example"),
            ("authorization", "Bearer s3cret"),
        ];
        let refused = *auth.authorize_write(&headers(&cross)).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn without_a_token_writes_are_open_only_on_loopback() {
        let local = [("host", "h:1"), ("origin", "http://h:1")];
        assert!(
            Auth::new(None, true)
                .authorize_write(&headers(&local))
                .is_ok()
        );
        let refused = *Auth::new(None, false)
            .authorize_write(&headers(&local))
            .unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn off_loopback_reading_needs_a_sign_in_too() {
        let anonymous = headers(&[("host", "h:1")]);
        assert!(Auth::new(Some("s3cret".into()), true).may_read(&anonymous));
        let remote = Auth::new(Some("s3cret".into()), false);
        assert!(!remote.may_read(&anonymous));
        assert!(remote.may_read(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(!Auth::new(None, false).may_read(&anonymous));
    }

    #[test]
    fn the_token_is_never_printed() {
        let auth = Auth::new(Some("s3cret".into()), false);
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
