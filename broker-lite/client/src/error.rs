//! The client error type.

use std::io;
use std::time::Duration;

use crate::protocol::{DecodeError, ErrorReply, Message};

/// A `Result` whose error defaults to [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No broker address was given, or one could not be parsed.
    #[error("invalid broker address list: {0}")]
    InvalidAddress(String),
    /// Connecting to an address failed.
    #[error("could not connect to broker at {addr}")]
    Connect {
        /// The address.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The connection failed or was closed before the answer arrived.
    #[error("connection to broker at {addr} lost: {reason}")]
    ConnectionLost {
        /// The address.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// No answer within the timeout.
    #[error("no answer from the broker within {0:?}")]
    Elapsed(Duration),
    /// The broker answered with an error.
    #[error("the broker refused the request: {0}")]
    Server(ErrorReply),
    /// The broker's answer could not be decoded.
    #[error("could not decode the broker's answer: {0}")]
    Decode(DecodeError),
    /// The broker answered with a response of the wrong shape.
    #[error("unexpected response from the broker to a {0} request")]
    UnexpectedResponse(&'static str),
    /// The request is refused by the client itself (one-way send to a topic not opted in, ...).
    #[error("refused by the client: {0}")]
    Refused(String),
    /// TLS or credentials could not be set up, or the broker failed the TLS handshake or its
    /// proof of identity: not retryable, the configuration has to change.
    #[error("broker at {addr}: {reason}")]
    Security {
        /// The address (empty when loading the configuration failed).
        addr: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Every attempt failed; the last error is the source.
    #[error("{attempts} attempts failed")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        #[source]
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Whether trying again (possibly on another address) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Elapsed(_) => true,
            ClientError::Server(reply) => reply.code.is_retryable(),
            _ => false,
        }
    }
}

impl From<ErrorReply> for ClientError {
    fn from(reply: ErrorReply) -> Self {
        ClientError::Server(reply)
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::Decode(e)
    }
}

/// A send failed; the message is given back so that it is never dropped silently.
#[derive(Debug, thiserror::Error)]
#[error("send to topic {topic} failed", topic = message.topic)]
pub struct SendError {
    /// The message that was not (known to be) stored.
    pub message: Message,
    /// Why.
    #[source]
    pub error: ClientError,
}

/// `error` and its sources joined with `": "`, for log lines.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
