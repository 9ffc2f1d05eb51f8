//! Protocol errors: decoding failures and the error replies carried on the wire.

use std::fmt;

/// A frame or body could not be decoded. The connection that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the named field was complete.
    #[error("truncated input while reading {0}")]
    Truncated(&'static str),
    /// The named field has a value that is not allowed.
    #[error("invalid value for {0}")]
    Invalid(&'static str),
    /// The named string field is not valid UTF-8.
    #[error("{0} is not valid utf-8")]
    Utf8(&'static str),
    /// The frame announces a protocol version this peer does not speak.
    #[error("unsupported protocol version {0} (this peer speaks version {ver})", ver = super::frame::PROTOCOL_VERSION)]
    UnsupportedVersion(u8),
    /// The frame kind byte is unknown.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The command code is unknown.
    #[error("unknown command code {0}")]
    UnknownCommand(u16),
    /// The frame is larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced length.
        size: u64,
        /// The configured maximum.
        limit: u64,
    },
    /// The frame length is too small to hold a header.
    #[error("frame length {0} is shorter than the 12-byte header")]
    FrameTooShort(u32),
    /// Bytes were left over after the body was decoded.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
}

/// The code of an error reply. Stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be parsed; the server closes the connection.
    MalformedFrame,
    /// The frame exceeded the maximum frame size; the server closes the connection.
    FrameTooLarge,
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// The command code is unknown.
    UnknownCommand,
    /// The request is well formed but not valid (empty topic, too large body, too large batch ...).
    InvalidRequest,
    /// The topic, group, message or receipt does not exist.
    NotFound,
    /// The broker failed (storage failure, internal error). Retrying may help after a restart.
    Internal,
    /// The server is shutting down; retry on another address.
    ShuttingDown,
    /// The server has reached its connection limit.
    TooManyConnections,
    /// The request timed out on the server.
    Timeout,
    /// The connection has not authenticated, or its credentials are wrong; the server closes it.
    Unauthenticated,
    /// The principal may not do this (produce to the topic, consume the group, run admin
    /// commands), or the receipt was not issued to it; nothing was changed.
    Forbidden,
    /// A configured resource limit refused the request (bytes in flight, topics or groups per
    /// principal); the message says which limit and how to raise it.
    LimitExceeded,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::MalformedFrame => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::UnknownCommand => 4,
            ErrorCode::InvalidRequest => 5,
            ErrorCode::NotFound => 6,
            ErrorCode::Internal => 7,
            ErrorCode::ShuttingDown => 8,
            ErrorCode::TooManyConnections => 9,
            ErrorCode::Timeout => 10,
            ErrorCode::Unauthenticated => 11,
            ErrorCode::Forbidden => 12,
            ErrorCode::LimitExceeded => 13,
            ErrorCode::Other(c) => c,
        }
    }

    /// From the wire value; unknown values become [`ErrorCode::Other`].
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::MalformedFrame,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::UnknownCommand,
            5 => ErrorCode::InvalidRequest,
            6 => ErrorCode::NotFound,
            7 => ErrorCode::Internal,
            8 => ErrorCode::ShuttingDown,
            9 => ErrorCode::TooManyConnections,
            10 => ErrorCode::Timeout,
            11 => ErrorCode::Unauthenticated,
            12 => ErrorCode::Forbidden,
            13 => ErrorCode::LimitExceeded,
            c => ErrorCode::Other(c),
        }
    }

    /// Whether sending the same request again (possibly to another address) may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::ShuttingDown
                | ErrorCode::TooManyConnections
                | ErrorCode::Timeout
                | ErrorCode::Internal
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::MalformedFrame => "malformed frame",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::UnknownCommand => "unknown command",
            ErrorCode::InvalidRequest => "invalid request",
            ErrorCode::NotFound => "not found",
            ErrorCode::Internal => "internal error",
            ErrorCode::ShuttingDown => "shutting down",
            ErrorCode::TooManyConnections => "too many connections",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::Other(c) => return write!(f, "error code {c}"),
        };
        f.write_str(name)
    }
}

/// The body of an error reply: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorReply {
    /// What kind of error.
    pub code: ErrorCode,
    /// What went wrong, lower case.
    pub message: String,
}

impl ErrorReply {
    /// A reply with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }

    /// Encodes the reply as a frame body: u16 code, u32-prefixed message.
    pub fn encode(&self) -> bytes::Bytes {
        let mut buf = bytes::BytesMut::with_capacity(6 + self.message.len());
        bytes::BufMut::put_u16(&mut buf, self.code.as_u16());
        super::wire::put_str(&mut buf, &self.message);
        buf.freeze()
    }

    /// Decodes a reply body.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] on truncated or invalid input.
    pub fn decode(mut body: bytes::Bytes) -> Result<Self, DecodeError> {
        let code = ErrorCode::from_u16(super::wire::get_u16(&mut body, "error code")?);
        let message = super::wire::get_str(&mut body, "error message")?;
        super::frame::ensure_empty(&body)?;
        Ok(ErrorReply { code, message })
    }
}
