//! The vocabulary that courier's outbox and consumer middleware share.
//!
//! `courier-outbox` writes and relays [`Message`]s; `courier-middleware` publishes and consumes
//! them. Both re-export what they use from here, so applications normally name these types
//! through `courier_outbox` or `courier::outbox`.
//!
//! ```
//! use courier_core::{Backoff, Limits, Message};
//!
//! let message = Message::json("orders.created", &serde_json::json!({"id": 7}))
//!     .unwrap()
//!     .with_key("order-7");
//! Limits::default().check(&message).unwrap();
//! assert!(Backoff::default().delay(3) > Backoff::default().delay(1) / 2);
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `postgres` | no | [`listen::Listener`], the `LISTEN` loop shared by the outbox relay and the inbox workers |

#![forbid(unsafe_code)]

mod backoff;
pub mod batch;
mod error;
mod failure;
mod limits;
#[cfg(feature = "postgres")]
pub mod listen;
mod message;
pub mod time;
pub mod trace_context;

pub use backoff::Backoff;
pub use error::ValidationError;
pub use failure::{Permanent, Unavailable};
pub use limits::Limits;
pub use message::Message;
