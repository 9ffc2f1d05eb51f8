//! What a consumer handler receives: the envelope plus the facts of this delivery.

use chrono::{DateTime, Utc};
use courier_core::Message;

/// One delivery of a message to a consumer group: the [`Message`] envelope and the delivery facts.
///
/// A handler is a `tower::Service<Delivery>`: `Ok` acknowledges the delivery, any error asks for a
/// redelivery (or a dead letter, for [`Reject`](crate::Reject)); see [`Disposition`](crate::Disposition).
/// The broker's receipt is deliberately not part of it: only the runtime acknowledges, and only
/// after the handler succeeded (safeguard C1).
///
/// # Examples
///
/// ```
/// use courier_middleware::Delivery;
/// use courier_core::Message;
///
/// let delivery = Delivery::new(Message::new("orders", "{}"), "billing").with_attempt(3);
/// assert_eq!(delivery.redeliveries(), 2);
/// assert_eq!(delivery.group, "billing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The message as the producer enqueued it.
    pub message: Message,
    /// Delivery attempt, 1 on the first delivery (reconsume count + 1).
    pub attempt: u32,
    /// The consumer group this delivery is for.
    pub group: String,
    /// The queue (partition, stream, subject) the message came from, when the broker has one.
    pub queue: Option<String>,
    /// When the broker first delivered this message to this group.
    pub first_delivered_at: DateTime<Utc>,
}

impl Delivery {
    /// A first delivery of `message` to `group`, now.
    pub fn new(message: Message, group: impl Into<String>) -> Self {
        Self {
            message,
            attempt: 1,
            group: group.into(),
            queue: None,
            first_delivered_at: Utc::now(),
        }
    }

    /// Sets the delivery attempt (1-based).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Sets the queue the message came from.
    #[must_use]
    pub fn with_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Sets the time of the first delivery.
    #[must_use]
    pub fn with_first_delivered_at(mut self, at: DateTime<Utc>) -> Self {
        self.first_delivered_at = at;
        self
    }

    /// How many times this message was delivered to this group before (RocketMQ's reconsume times).
    pub fn redeliveries(&self) -> u32 {
        self.attempt.saturating_sub(1)
    }

    /// What ordered consumption serialises on: the message key, else the queue, else nothing.
    pub fn ordering_key(&self) -> Option<&str> {
        self.message.key.as_deref().or(self.queue.as_deref())
    }
}

/// A request that carries a [`Delivery`]: the delivery itself, or a request built around it (such
/// as the idempotency layer's transactional delivery). Lets the tracing and metrics layers sit
/// anywhere in a stack.
pub trait AsDelivery {
    /// The delivery inside the request.
    fn delivery(&self) -> &Delivery;
}

impl AsDelivery for Delivery {
    fn delivery(&self) -> &Delivery {
        self
    }
}
