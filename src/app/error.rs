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
    /// The broker address is neither `host:port` (broker-lite), `nats://…` nor `amqp://…`.
    #[error("the app's broker address is not one it can use")]
    Address(#[source] courier_middleware::BrokerAddressError),
    /// NATS or RabbitMQ could not be reached, or refused the topology, when a part connected.
    #[error("cannot use the broker at {broker} for {part}: start it, or fix the address")]
    Connect {
        /// The address, without its password.
        broker: String,
        /// `"the relay"` or `"consumer group <name>"`.
        part: String,
        /// The client's error.
        #[source]
        source: tower::BoxError,
    },
    /// The address names a broker this build has no client for.
    #[error(
        "the broker at {broker} is {kind}, which this build of courier does not include: enable courier's `nats` or `rabbitmq` feature"
    )]
    NotBuilt {
        /// The address, without its password.
        broker: String,
        /// Which broker it is.
        kind: &'static str,
    },
    /// The relay stopped with an error (its configuration, or its database).
    #[error("the relay stopped")]
    Relay(#[source] courier_outbox::Error),
    /// A part of the service panicked.
    #[error("a part of the service panicked: {0}")]
    Task(String),
}
