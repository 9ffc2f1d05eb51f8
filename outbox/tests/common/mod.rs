//! What the outbox test binaries share: a recording publisher, relay drivers, per-store SQL and
//! the macro that runs one case on every store.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod ahead;
mod cases;
mod recorder;
mod running;
mod store;

pub(crate) use cases::every_store;
pub use recorder::{Behaviour, PATIENCE, Recorder};
pub use running::{Running, eventually, relay, wake_only_relay};
pub use store::{Row, TestStore};
