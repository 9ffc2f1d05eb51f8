//! Errors of the outbox crate.

pub use courier_core::ValidationError;

/// Result type of the outbox crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message was refused before it reached the database; nothing was written. Says what the
    /// validation error says (which names the message's field).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The database refused a statement or could not be reached; the sqlx error is the source
    /// (print the chain, e.g. `{:#}` with anyhow, to see it).
    #[error("outbox database error")]
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
