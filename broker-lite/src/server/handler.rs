//! What the server does with a decoded request.

use std::future::Future;

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
}
