//! courier: reliable messaging between services.
//!
//! This facade re-exports the workspace crates:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`outbox`] | `courier-outbox` | messages, the transactional writer, the relay, the failure table |
//! | [`broker`] | `broker-lite-client` | the bundled broker's clients (producer, consumer, admin) and wire protocol |
//! | [`broker_lite`] | `broker-lite` | the bundled broker itself (storage, broker core, server), to embed it in-process |
//! | [`middleware`] | `courier-middleware` | tower layers for producers and consumers |
//!
//! A service that talks to a standalone broker needs [`broker`] only; [`broker_lite`] is for
//! running the broker inside a process (`broker_lite::embedded::start`) and for tests. Its
//! `client` and `protocol` modules are the same items as [`broker`]'s.

pub use broker_lite_client as broker;
pub use courier_middleware as middleware;
pub use courier_outbox as outbox;

/// The bundled broker's server side: the `broker-lite` crate (see [`broker`] for its clients).
pub use broker_lite;
