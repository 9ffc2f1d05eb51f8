//! Errors of the outbox crate.

/// Result type of the outbox crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message was refused before it reached the database; nothing was written.
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
    /// The database refused a statement or could not be reached.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The outbox tables are missing: the migrations have not been run on this database.
    #[error(
        "the outbox tables do not exist in this database: run the migrations first \
         (courier_outbox::migrate(&pool), or `outbox-relay migrate` on Postgres)"
    )]
    NotMigrated,
    /// The relay configuration is inconsistent.
    #[error("invalid relay configuration: {0}")]
    Config(String),
    /// [`Failures::replay_one`](crate::Failures::replay_one) found the failure, but the outbox
    /// already holds a message with its id; the failure stays in the failure table.
    #[error(
        "a message with id {id} is already in the outbox (pending, or sent and kept for its \
         retention period), so its failure was kept: purge the failure if that message \
         supersedes it, or replay it once that message is gone"
    )]
    ReplayConflict {
        /// The message id.
        id: uuid::Uuid,
    },
}

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
