//! courier: reliable messaging between services.
//!
//! This facade re-exports the workspace crates:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`outbox`] | `courier-outbox` | messages, the transactional writer, the relay, the failure table |
//! | [`broker`] | `broker-lite` | the bundled durable broker |
//! | [`middleware`] | `courier-middleware` | tower layers for producers and consumers |

pub use broker_lite as broker;
pub use courier_middleware as middleware;
pub use courier_outbox as outbox;
