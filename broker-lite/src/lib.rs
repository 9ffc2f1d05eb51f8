//! broker-lite: a durable single-node message broker with RocketMQ's reliability semantics.
//!
//! This crate is the server side: storage, broker core, TCP server and the embedded broker. The
//! wire protocol and the clients are the `broker-lite-client` crate, which services that only talk
//! to a broker depend on without compiling any of this; it is re-exported here as [`client`] and
//! [`protocol`]. The `broker-lite` command is the `broker-lite-cli` package.
//!
//! Layers, bottom up (each in its own module folder):
//!
//! | module | what it holds |
//! |---|---|
//! | [`storage`] | commit log in segment files, per-queue index, flush (sync group commit / async), retention, checkpoints |
//! | [`broker`] | topics, queues, consumer groups, delivery, redelivery with delay levels, dead letters, message trace |
//! | [`protocol`] | length-prefixed binary frames and the commands they carry (from `broker-lite-client`) |
//! | [`server`] / [`client`] | the TCP server; the producer, consumer and admin clients (from `broker-lite-client`) |
//! | [`embedded`] | the broker and its server started in-process, on the same code path as the binary |

#![forbid(unsafe_code)]

pub mod broker;
pub mod embedded;
pub mod replication;
pub mod server;
pub mod storage;

/// The producer, consumer and admin clients: the `broker-lite-client` crate.
pub use broker_lite_client as client;
pub use broker_lite_client::protocol;

pub use broker::{Broker, BrokerConfig, BrokerError};
