//! Clients: [`Producer`], [`Consumer`] and [`Admin`], over one multiplexed [`Connection`] type.
//!
//! All three accept an address list (`"host1:port;host2:port"`, safeguard P9) and fail over to
//! the next address when one is unreachable or its connection breaks. The producer adds a send
//! timeout (default 3 s, P5) and retries with exponential backoff and jitter (default 2, P4).

mod admin;
mod connection;
mod consumer;
mod endpoints;
mod error;
mod producer;

pub use admin::{Admin, AdminConfig};
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerConfig};
pub use endpoints::Addresses;
pub use error::{ClientError, Result, SendError};
pub use producer::{Producer, ProducerConfig, SendHandle};
