//! broker-lite: a durable single-node message broker with RocketMQ's reliability semantics.
//!
//! Layers, bottom up (each in its own module folder):
//!
//! | module | what it holds |
//! |---|---|
//! | `storage` | commit log in segment files, per-queue index, flush (sync group commit / async), retention, checkpoints |
//! | `broker` | topics, queues, consumer groups, delivery, redelivery with delay levels, dead letters, message trace |
//! | `protocol` | length-prefixed binary frames and the commands they carry |
//! | `server` / `client` | the TCP server and the producer, consumer and admin clients |
//! | `embedded` | the broker and its server started in-process, on the same code path as the binary |

#![forbid(unsafe_code)]

pub mod broker;
pub mod client;
pub mod embedded;
pub mod protocol;
pub mod server;
pub mod storage;

pub use broker::{Broker, BrokerConfig, BrokerError};
