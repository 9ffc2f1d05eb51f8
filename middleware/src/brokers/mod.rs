//! Publishers and delivery sources for each broker, one folder per broker, each behind its cargo
//! feature.

#[cfg(feature = "broker-lite")]
pub(crate) mod broker_lite;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "rabbitmq")]
pub(crate) mod rabbitmq;

/// A broker address to a publisher and a source, whichever the broker.
#[cfg(any(feature = "broker-lite", feature = "nats", feature = "rabbitmq"))]
pub(crate) mod address;
#[cfg(any(feature = "broker-lite", feature = "nats", feature = "rabbitmq"))]
pub(crate) mod any_source;
