//! What a [`Timeout`](super::Timeout) guards: a handler call or a send.

use std::time::Duration;

/// RocketMQ's `consumeTimeout`: 15 minutes.
pub const DEFAULT_CONSUME_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// RocketMQ's `sendMsgTimeout`: 3 seconds.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(3);

/// The side a [`Timeout`](super::Timeout) is on: its default and what it logs when it passes.
/// Implemented by [`Consuming`] and [`Sending`]; sealed.
pub trait TimeoutKind: sealed::Sealed + 'static {
    /// The timeout when none is given.
    const DEFAULT: Duration;
    /// The warning logged when a call times out.
    const ELAPSED: &'static str;
    /// The service's name in `Debug` output.
    const NAME: &'static str;
}

/// A consumer handler's call ([`ConsumeTimeout`](super::ConsumeTimeout)).
#[derive(Debug, Clone, Copy)]
pub enum Consuming {}

/// A producer's send ([`SendTimeout`](super::SendTimeout)).
#[derive(Debug, Clone, Copy)]
pub enum Sending {}

impl TimeoutKind for Consuming {
    const DEFAULT: Duration = DEFAULT_CONSUME_TIMEOUT;
    const ELAPSED: &'static str = "handler timed out; the delivery will be redelivered";
    const NAME: &'static str = "ConsumeTimeout";
}

impl TimeoutKind for Sending {
    const DEFAULT: Duration = DEFAULT_SEND_TIMEOUT;
    const ELAPSED: &'static str = "send timed out: the broker may or may not have the message";
    const NAME: &'static str = "SendTimeout";
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Consuming {}
    impl Sealed for super::Sending {}
}
