//! The publisher of an [`App`](super::App)'s relay, picked by the broker address, taking each
//! claimed batch in one call (as the `outbox-relay` sidecar's).

use broker_lite_client::ProducerConfig;
use courier_middleware::{BrokerAddress, BrokerLitePublisher};
use courier_outbox::Message;
use courier_outbox::batch::{BatchFuture, Outcomes, PublishBatch};

use super::Error;

/// broker-lite stores a batch with one `SEND_BATCH` request (one group commit), NATS and RabbitMQ
/// keep many PubAcks / publisher confirms in flight, each one checked per message.
#[derive(Debug, Clone)]
pub(super) enum AppPublisher {
    BrokerLite(BrokerLitePublisher),
    /// Boxed: the NATS client and JetStream context are much larger than the other handles.
    #[cfg(feature = "nats")]
    Nats(Box<courier_middleware::NatsPublisher>),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(courier_middleware::RabbitMqPublisher),
}

/// The outcomes without the broker's answer, which the relay does not need.
fn settled<R>(outcomes: Outcomes<R>) -> Outcomes<()> {
    outcomes
        .into_iter()
        .map(|outcome| outcome.map(drop))
        .collect()
}

impl PublishBatch for AppPublisher {
    type Response = ();

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
        match self {
            Self::BrokerLite(publisher) => {
                let sent = publisher.publish_batch(messages);
                Box::pin(async move { settled(sent.await) })
            }
            #[cfg(feature = "nats")]
            Self::Nats(publisher) => {
                let sent = publisher.publish_batch(messages);
                Box::pin(async move { settled(sent.await) })
            }
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(publisher) => publisher.publish_batch(messages),
        }
    }
}

impl AppPublisher {
    /// Connects to the broker at `address` (as given: `given`), with the publishers' safe
    /// defaults: broker-lite `SEND_OK` checked with a 3 s timeout and two retries, NATS every
    /// PubAck awaited, RabbitMQ confirms and `mandatory` always on.
    pub(super) async fn connect(address: &BrokerAddress, given: &str) -> Result<Self, Error> {
        let part = || "the relay".to_owned();
        match address {
            BrokerAddress::BrokerLite(addresses) => {
                BrokerLitePublisher::connect(addresses.as_str(), ProducerConfig::default())
                    .await
                    .map(Self::BrokerLite)
                    .map_err(|source| Error::Broker {
                        addresses: given.to_owned(),
                        part: part(),
                        source,
                    })
            }
            #[cfg(feature = "nats")]
            BrokerAddress::Nats(url) => courier_middleware::NatsPublisher::connect(url)
                .await
                .map(|publisher| Self::Nats(Box::new(publisher)))
                .map_err(|source| Error::Connect {
                    broker: address.to_string(),
                    part: part(),
                    source: source.into(),
                }),
            #[cfg(feature = "rabbitmq")]
            BrokerAddress::RabbitMq(url) => {
                courier_middleware::RabbitMqPublisher::connect(url.as_str())
                    .await
                    .map(Self::RabbitMq)
                    .map_err(|source| Error::Connect {
                        broker: address.to_string(),
                        part: part(),
                        source: source.into(),
                    })
            }
            #[allow(unreachable_patterns)]
            _ => Err(Error::NotBuilt {
                broker: address.to_string(),
                kind: address.kind(),
            }),
        }
    }
}
