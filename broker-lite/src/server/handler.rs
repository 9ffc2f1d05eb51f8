//! What the server does with a decoded request.

use std::future::Future;

use std::sync::Arc;

use super::principal::Principal;
use crate::protocol::{ErrorReply, Request, Response};

/// Answers decoded, validated requests. The server calls it once per request, concurrently.
///
/// [`run`](super::run) uses the broker's handler; tests and other front ends can supply their
/// own through [`serve`](super::serve).
pub trait Handler: Clone + Send + Sync + 'static {
    /// Handles one request. A [`Request::SendOneway`] is handled like a send whose answer is
    /// dropped. A [`Request::Pull`] may wait up to its long poll; the server splits long polls
    /// into slices of [`ServerConfig::long_poll_slice`](super::ServerConfig::long_poll_slice) and
    /// never drops a call before it completes, except at the hard stop after the grace period.
    fn handle(&self, request: Request)
    -> impl Future<Output = Result<Response, ErrorReply>> + Send;

    /// The handler of one new connection: it answers that connection's requests and hears of
    /// its end through [`disconnected`](Self::disconnected), so it can keep per-connection state
    /// (the broker's handler ties the members subscribed over it to it). Default: a clone.
    fn connect(&self) -> Self {
        self.clone()
    }

    /// Like [`connect`](Self::connect), for a connection that authenticated as `principal`
    /// (or [`Principal::anonymous`] on an open broker); the server calls this one. Default:
    /// [`connect`](Self::connect).
    fn connect_as(&self, principal: Arc<Principal>) -> Self {
        let _ = principal;
        self.connect()
    }

    /// Called once, on the handler [`connect`](Self::connect) returned, as soon as the server
    /// stops reading the connection: the peer closed it (a killed process's socket is closed by
    /// its kernel), it broke, or the server is stopping. Requests still running on it finish
    /// afterwards. Default: nothing.
    fn disconnected(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
