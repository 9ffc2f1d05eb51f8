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
//! | [`broker`] | `broker-lite` | the bundled broker's client (and, embedded, the broker itself) |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `postgres` | yes | the outbox, relay, failure table, idempotency and inbox on Postgres |
//! | `sqlite` | no | the same on SQLite |
//! | `broker-lite` | yes | the broker-lite publisher and source, and [`App`] |

#![forbid(unsafe_code)]

#[cfg(feature = "broker-lite")]
pub mod app;

#[cfg(feature = "broker-lite")]
pub use app::App;
#[cfg(feature = "broker-lite")]
pub use broker_lite as broker;
pub use courier_middleware as middleware;
pub use courier_outbox as outbox;
