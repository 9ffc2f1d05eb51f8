//! courier: reliable messaging between services.
//!
//! The short path is [`App`]: a pool and a broker-lite address in, the migrations, the relay
//! and idempotent consumers running until a signal (see [`app`]). Everything it composes is
//! re-exported for services that need more control:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`outbox`] | `courier-outbox` | messages, the transactional writer, the relay, the failure table |
//! | [`middleware`] | `courier-middleware` | tower layers for producers and consumers, the consumer runtime |
//! | [`broker`] | `broker-lite-client` | the bundled broker's clients (producer, consumer, admin) and wire protocol |
//! | `broker_lite` | `broker-lite` | the bundled broker itself (storage, broker core, server), to embed it in-process |
//!
//! A service that talks to a standalone broker needs [`broker`] only; `broker_lite` (feature
//! `embedded-broker`) is for running the broker inside a process
//! (`broker_lite::embedded::start`) and for tests. Its `client` and `protocol` modules are the
//! same items as [`broker`]'s.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `postgres` | yes | the outbox, relay, failure table, idempotency and inbox on Postgres |
//! | `sqlite` | no | the same on SQLite |
//! | `mysql` | no | the same on MySQL 8 / MariaDB 10.6+ (`outbox::MYSQL_MIGRATOR`) |
//! | `broker-lite` | yes | the broker-lite client as [`broker`], the publisher and source, and [`App`] |
//! | `embedded-broker` | no | the broker-lite server as `broker_lite` (storage engine, broker core, TCP server) |
//! | `nats` | no | NATS JetStream as `nats`: `NatsPublisher` (PubAck awaited, `Nats-Msg-Id` = message id), `NatsSource`, `StreamSpec` |
//! | `rabbitmq` | no | `RabbitMqPublisher`, `RabbitMqSource` and `RabbitMqTopology` in [`middleware`], and lapin as `lapin` |

#![forbid(unsafe_code)]

#[cfg(feature = "broker-lite")]
pub mod app;

#[cfg(feature = "broker-lite")]
pub use app::App;
#[cfg(feature = "broker-lite")]
pub use broker_lite_client as broker;
pub use courier_middleware as middleware;
/// The RabbitMQ client under the `rabbitmq` adapters (for connection properties and TLS).
#[cfg(feature = "rabbitmq")]
pub use courier_middleware::lapin;
pub use courier_outbox as outbox;

/// NATS JetStream (feature `nats`): the relay's publisher, the consumer runtime's source, stream
/// provisioning, and the guarantees they give.
#[cfg(feature = "nats")]
pub use courier_middleware::nats;

/// The bundled broker's server side: the `broker-lite` crate (see [`broker`] for its clients).
#[cfg(feature = "embedded-broker")]
pub use broker_lite;
