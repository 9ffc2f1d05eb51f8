//! broker-lite-client: the wire protocol of [broker-lite] and its clients, without the broker.
//!
//! A service that sends to or consumes from a broker-lite server depends on this crate only; the
//! storage engine, broker core and TCP server live in the `broker-lite` crate, which depends on
//! this one for the protocol.
//!
//! | item | what it is |
//! |---|---|
//! | [`Producer`] | sends messages, with a send timeout (default 3 s, P5) and retries with backoff and jitter (default 2, P4) |
//! | [`Consumer`] | joins a consumer group, pulls with long polling, acks and nacks |
//! | [`Admin`] | topics, groups, lag, lookups, traces, dead letters, the broker's durability settings |
//! | [`Connection`] | one multiplexed connection, the building block of the three above |
//! | [`Redelivery`] | the broker's redelivery schedule (delay levels, reconsume limit), which the protocol does not carry |
//! | [`protocol`] | the length-prefixed binary frames, the commands they carry and the wire types |
//!
//! All three clients accept an address list (`"host1:port;host2:port"`, safeguard P9, see
//! [`Addresses`]) and fail over to the next address when one is unreachable or its connection
//! breaks. The crate has no cargo features.
//!
//! # Example
//!
//! ```no_run
//! use broker_lite_client::protocol::Message;
//! use broker_lite_client::{Producer, ProducerConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::connect("127.0.0.1:9876", ProducerConfig::default()).await?;
//! let result = producer.send(Message::new("orders", "order 42 created").with_key("order-42")).await?;
//! // Only SEND_OK means "stored as durably as configured" (safeguard P1).
//! assert!(result.is_ok(), "not known durable: {:?}", result.status);
//! # Ok(())
//! # }
//! ```
//!
//! [broker-lite]: https://github.com/courier-rs/courier/tree/main/broker-lite

#![forbid(unsafe_code)]

mod admin;
mod connection;
mod consumer;
mod endpoints;
mod error;
mod handshake;
mod login;
mod producer;
pub mod protocol;
mod redelivery;
mod security;

pub use admin::{Admin, AdminConfig};
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerConfig};
pub use endpoints::Addresses;
pub use error::{ClientError, Result, SendError};
pub use producer::{Producer, ProducerConfig, SendHandle};
pub use redelivery::{ROCKETMQ_DELAY_LEVELS, Redelivery};
pub use security::{ClientTls, Credentials, Security};
