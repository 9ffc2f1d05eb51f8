//! Publishers and delivery sources for each broker, one folder per broker, each behind its cargo
//! feature.

#[cfg(feature = "broker-lite")]
pub(crate) mod broker_lite;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "rabbitmq")]
pub(crate) mod rabbitmq;
