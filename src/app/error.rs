//! Why an [`App`](super::App) stopped.

/// Why an [`App`](super::App) could not start or stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The outbox migrations failed; nothing else was started.
    #[error("the outbox migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// broker-lite could not be reached when a part connected.
    #[error("cannot reach broker-lite at {addresses} for {part}: start it, or fix the address")]
    Broker {
        /// The address list as given.
        addresses: String,
        /// `"the relay"` or `"consumer group <name>"`.
        part: String,
        /// The client's error.
        #[source]
        source: broker_lite_client::ClientError,
    },
    /// The relay stopped with an error (its configuration, or its database).
    #[error("the relay stopped")]
    Relay(#[source] courier_outbox::Error),
    /// A part of the service panicked.
    #[error("a part of the service panicked: {0}")]
    Task(String),
}
