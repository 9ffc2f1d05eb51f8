//! The delivery source of whichever broker an address named: one type for the consumer runtime,
//! each call passed to the broker's own source.

use std::time::Duration;

use tower::BoxError;

use crate::source::{ConsumeModel, DeliverySource, NackOutcome, Pulled};

/// A [`DeliverySource`] over broker-lite, NATS JetStream or RabbitMQ, as
/// [`BrokerAddress::subscribe`](crate::BrokerAddress::subscribe) made it. It settles exactly as
/// the broker's own source does (see each adapter's guarantees); its error is the adapter's,
/// boxed.
///
/// ```no_run
/// # async fn demo() -> Result<(), tower::BoxError> {
/// use courier_middleware::{AnySource, BrokerAddress, Subscription};
///
/// let broker: BrokerAddress = "127.0.0.1:9876".parse()?;
/// let source = broker.subscribe(&Subscription::new("ORDER_CREATED", "payments")).await?;
/// assert!(matches!(source, AnySource::BrokerLite(_)));
/// # Ok(()) }
/// ```
// One per consumer, built once and never moved in a hot path: boxing would only add a pointer hop.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum AnySource {
    /// broker-lite.
    #[cfg(feature = "broker-lite")]
    BrokerLite(crate::BrokerLiteSource),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(crate::NatsSource),
    /// RabbitMQ.
    #[cfg(feature = "rabbitmq")]
    RabbitMq(crate::RabbitMqSource),
}

/// The receipt of an [`AnySource`] delivery: the broker's own receipt.
///
/// Each receipt is boxed, so that one is two words whichever broker it came from. Unboxed, the
/// enum would be as large as its largest receipt (the NATS one carries a JetStream message with
/// its client context, the RabbitMQ one a channel, acker and properties: several hundred bytes),
/// and every pulled delivery of a broker-lite source would be that large too.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyReceipt {
    /// broker-lite's.
    #[cfg(feature = "broker-lite")]
    BrokerLite(Box<crate::BrokerLiteReceipt>),
    /// NATS JetStream's.
    #[cfg(feature = "nats")]
    Nats(Box<crate::nats::NatsReceipt>),
    /// RabbitMQ's.
    #[cfg(feature = "rabbitmq")]
    RabbitMq(Box<crate::RabbitMqReceipt>),
}

/// Pulls from `source` and tags each receipt with `variant`.
async fn pull_from<S: DeliverySource>(
    source: &S,
    max: usize,
    wait: Duration,
    variant: impl Fn(S::Receipt) -> AnyReceipt,
) -> Result<Vec<Pulled<AnyReceipt>>, BoxError> {
    let pulled = source.pull(max, wait).await.map_err(Into::into)?;
    Ok(pulled
        .into_iter()
        .map(|p| Pulled::new(p.delivery, variant(p.receipt)))
        .collect())
}

/// A receipt handed to a source of another broker: a bug in the caller, never a broker's answer.
#[allow(dead_code)]
fn foreign_receipt() -> BoxError {
    "AnySource was given a receipt from a source of another broker".into()
}

impl DeliverySource for AnySource {
    type Receipt = AnyReceipt;
    type Error = BoxError;

    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Pulled<AnyReceipt>>, BoxError> {
        match self {
            #[cfg(feature = "broker-lite")]
            Self::BrokerLite(s) => {
                pull_from(s, max, wait, |r| AnyReceipt::BrokerLite(Box::new(r))).await
            }
            #[cfg(feature = "nats")]
            Self::Nats(s) => pull_from(s, max, wait, |r| AnyReceipt::Nats(Box::new(r))).await,
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(s) => {
                pull_from(s, max, wait, |r| AnyReceipt::RabbitMq(Box::new(r))).await
            }
        }
    }

    async fn ack(&self, receipt: AnyReceipt) -> Result<(), BoxError> {
        match (self, receipt) {
            #[cfg(feature = "broker-lite")]
            (Self::BrokerLite(s), AnyReceipt::BrokerLite(r)) => s.ack(*r).await.map_err(Into::into),
            #[cfg(feature = "nats")]
            (Self::Nats(s), AnyReceipt::Nats(r)) => s.ack(*r).await,
            #[cfg(feature = "rabbitmq")]
            (Self::RabbitMq(s), AnyReceipt::RabbitMq(r)) => s.ack(*r).await.map_err(Into::into),
            #[allow(unreachable_patterns)]
            _ => Err(foreign_receipt()),
        }
    }

    async fn nack(
        &self,
        receipt: AnyReceipt,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, BoxError> {
        match (self, receipt) {
            #[cfg(feature = "broker-lite")]
            (Self::BrokerLite(s), AnyReceipt::BrokerLite(r)) => {
                s.nack(*r, delay).await.map_err(Into::into)
            }
            #[cfg(feature = "nats")]
            (Self::Nats(s), AnyReceipt::Nats(r)) => s.nack(*r, delay).await,
            #[cfg(feature = "rabbitmq")]
            (Self::RabbitMq(s), AnyReceipt::RabbitMq(r)) => {
                s.nack(*r, delay).await.map_err(Into::into)
            }
            #[allow(unreachable_patterns)]
            _ => Err(foreign_receipt()),
        }
    }

    async fn dead_letter(&self, receipt: AnyReceipt, reason: String) -> Result<(), BoxError> {
        match (self, receipt) {
            #[cfg(feature = "broker-lite")]
            (Self::BrokerLite(s), AnyReceipt::BrokerLite(r)) => {
                s.dead_letter(*r, reason).await.map_err(Into::into)
            }
            #[cfg(feature = "nats")]
            (Self::Nats(s), AnyReceipt::Nats(r)) => s.dead_letter(*r, reason).await,
            #[cfg(feature = "rabbitmq")]
            (Self::RabbitMq(s), AnyReceipt::RabbitMq(r)) => {
                s.dead_letter(*r, reason).await.map_err(Into::into)
            }
            #[allow(unreachable_patterns)]
            _ => Err(foreign_receipt()),
        }
    }

    fn group(&self) -> Option<&str> {
        match self {
            #[cfg(feature = "broker-lite")]
            Self::BrokerLite(s) => s.group(),
            #[cfg(feature = "nats")]
            Self::Nats(s) => s.group(),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(s) => s.group(),
        }
    }

    fn model(&self) -> ConsumeModel {
        match self {
            #[cfg(feature = "broker-lite")]
            Self::BrokerLite(s) => s.model(),
            #[cfg(feature = "nats")]
            Self::Nats(s) => s.model(),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(s) => s.model(),
        }
    }

    fn redelivery_horizon(&self) -> Option<Duration> {
        match self {
            #[cfg(feature = "broker-lite")]
            Self::BrokerLite(s) => s.redelivery_horizon(),
            #[cfg(feature = "nats")]
            Self::Nats(s) => s.redelivery_horizon(),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(s) => s.redelivery_horizon(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AnyReceipt;

    /// A receipt is a box and at most a tag, whichever brokers are compiled in.
    #[test]
    fn a_receipt_is_at_most_two_words() {
        assert!(std::mem::size_of::<AnyReceipt>() <= 2 * std::mem::size_of::<usize>());
    }
}
