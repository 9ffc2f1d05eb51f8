//! Where deliveries come from: the broker side of the consumer runtime.

use std::future::Future;
use std::time::Duration;

use tower::BoxError;

use crate::Delivery;

/// A delivery as pulled from a source: what the handler sees, and the receipt that only the
/// runtime holds, to acknowledge it once the handler has answered.
#[derive(Debug)]
#[non_exhaustive]
pub struct Pulled<R> {
    /// What the handler receives.
    pub delivery: Delivery,
    /// The broker's opaque token for this delivery (broker-lite receipt, JetStream reply subject,
    /// RabbitMQ delivery tag).
    pub receipt: R,
}

impl<R> Pulled<R> {
    /// Pairs a delivery with its receipt.
    pub fn new(delivery: Delivery, receipt: R) -> Self {
        Self { delivery, receipt }
    }
}

/// What a broker did with a negative acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NackOutcome {
    /// The message will be delivered again.
    Redelivered,
    /// The message reached its maximum number of deliveries and went to the dead-letter queue.
    DeadLettered,
}

/// How a consumer group shares messages (safeguard C5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConsumeModel {
    /// Each message goes to one member of the group.
    #[default]
    Clustering,
    /// Each message goes to every member of the group: side effects run once per member, so the
    /// runtime warns unless the handler is idempotent.
    Broadcasting,
}

/// A broker subscription the [`Consumer`](crate::Consumer) runtime pulls from.
///
/// The shape is broker-lite's consumer API, and maps onto the others in a few lines:
///
/// | method | broker-lite | NATS JetStream (pull consumer) | RabbitMQ |
/// |---|---|---|---|
/// | `pull(max, wait)` | `pull(max, long_poll)` | `fetch().max_messages(max).expires(wait)` | `basic_consume` with `basic_qos(prefetch)` |
/// | `ack` | `ack(receipt)` | `ack()` | `basic_ack(tag)` |
/// | `nack(delay)` | `nack(receipt, delay level ≥ delay)` | `ack_with(Nak(delay))` | confirmed copy into a TTL delay queue, then `basic_ack` |
/// | `dead_letter` | `dead_letter(receipt, reason)`: to `%DLQ%<group>` at once | `ack_with(Term)` + advisory | confirmed copy into `<queue>.dlq`, then `basic_ack` |
///
/// Receipts are consumed by `ack`, `nack` and `dead_letter`, so a delivery is settled at most
/// once. A source that fails to settle leaves the message to the broker's redelivery timer: nothing
/// is lost, at worst it comes again (and the idempotency layer absorbs the duplicate).
pub trait DeliverySource: Send + Sync + 'static {
    /// The broker's token for one delivery.
    type Receipt: Send + 'static;
    /// The source's error.
    type Error: Into<BoxError> + Send + 'static;

    /// Up to `max` deliveries, waiting up to `wait` for the first one (long poll); an empty vector
    /// when none arrived in time.
    fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Pulled<Self::Receipt>>, Self::Error>> + Send;

    /// The handler succeeded: the broker may forget this delivery.
    fn ack(&self, receipt: Self::Receipt) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The handler failed: deliver again, after `delay` if given. The broker dead-letters instead
    /// once the message reached its maximum deliveries, and says so.
    fn nack(
        &self,
        receipt: Self::Receipt,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<NackOutcome, Self::Error>> + Send;

    /// The handler failed for good: move the message to the group's dead-letter queue now, with
    /// `reason`.
    ///
    /// The default, for brokers without an immediate dead-letter operation, is a [`nack`](Self::nack)
    /// without delay: the message comes back until the broker dead-letters it after its maximum
    /// deliveries. Slower, never lossy.
    fn dead_letter(
        &self,
        receipt: Self::Receipt,
        reason: String,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = reason;
        let nacked = self.nack(receipt, None);
        async move { nacked.await.map(|_| ()) }
    }

    /// The consumer group this source pulls for, when it knows it; the runtime names its logs and
    /// metrics after it, so the group is given once, to the source.
    fn group(&self) -> Option<&str> {
        None
    }

    /// How the group shares messages; clustering unless the source says otherwise.
    fn model(&self) -> ConsumeModel {
        ConsumeModel::Clustering
    }

    /// How long after its first delivery the broker may still deliver a message again (delay levels
    /// summed up to the maximum redeliveries), when known. Idempotency records must outlive it.
    fn redelivery_horizon(&self) -> Option<Duration> {
        None
    }
}
