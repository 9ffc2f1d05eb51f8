//! Why a message is refused before it is written.

/// Why a message was refused. Each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The topic is empty.
    #[error("the topic is empty: give every message a topic")]
    EmptyTopic,
    /// The topic is longer than the limit.
    #[error(
        "the topic is {len} bytes long, more than the limit of {max}: use a shorter topic name"
    )]
    TopicTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The topic contains a space, a control character or a non-ASCII character.
    #[error(
        "the topic {topic:?} contains {character:?}: topics are printable ASCII without spaces"
    )]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// The first character that is not allowed.
        character: char,
    },
    /// A key or tag is empty or longer than the limit.
    #[error("the {field} is {len} bytes long; it must be 1 to {max} bytes, or absent")]
    BadKeyOrTag {
        /// `"key"` or `"tag"`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is larger than the limit.
    #[error(
        "the payload is {len} bytes, more than the limit of {max}: store large bodies elsewhere \
         and send a reference, or raise Limits::max_payload_bytes"
    )]
    PayloadTooLarge {
        /// Payload size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message has more headers than the limit.
    #[error("the message has {count} headers, more than the limit of {max}")]
    TooManyHeaders {
        /// Number of headers.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// One header (name plus value) is larger than the limit.
    #[error("header `{name}` is {len} bytes (name plus value), more than the limit of {max}")]
    HeaderTooLarge {
        /// Header name.
        name: String,
        /// Name plus value, in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}
