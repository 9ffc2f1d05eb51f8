//! The relay's publisher, picked by the form of `broker.addresses`: broker-lite's producer with
//! anything but `SEND_OK` an error, NATS JetStream with every PubAck awaited, or RabbitMQ with
//! every publisher confirm awaited.

use anyhow::Context as _;
use broker_lite_client::ProducerConfig;
use courier_middleware::BrokerLitePublisher;
use courier_middleware::RabbitMqPublisher;
use courier_middleware::nats::NatsPublisher;
use courier_outbox::Message;
use courier_outbox::batch::{BatchFuture, Outcomes, PublishBatch};

use crate::config::{BrokerKind, Config};

/// The publisher the relay runs with, whatever the broker. It takes each claimed batch in one
/// call: broker-lite stores it with one `SEND_BATCH` request (one group commit), NATS and RabbitMQ
/// keep many PubAcks / confirms in flight, each one checked.
#[derive(Debug, Clone)]
pub(crate) enum RelayPublisher {
    BrokerLite(BrokerLitePublisher),
    /// Boxed: the NATS client and JetStream context are much larger than the other handles.
    Nats(Box<NatsPublisher>),
    RabbitMq(RabbitMqPublisher),
}

impl PublishBatch for RelayPublisher {
    type Response = ();

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
        /// The outcomes without the broker's answer, which the relay does not need.
        fn settled<R>(outcomes: Outcomes<R>) -> Outcomes<()> {
            outcomes
                .into_iter()
                .map(|outcome| outcome.map(drop))
                .collect()
        }
        match self {
            Self::BrokerLite(publisher) => {
                let sent = publisher.publish_batch(messages);
                Box::pin(async move { settled(sent.await) })
            }
            Self::Nats(publisher) => {
                let sent = publisher.publish_batch(messages);
                Box::pin(async move { settled(sent.await) })
            }
            Self::RabbitMq(publisher) => publisher.publish_batch(messages),
        }
    }
}

/// Connects to the configured broker.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<RelayPublisher> {
    Ok(match config.broker_kind() {
        BrokerKind::BrokerLite => RelayPublisher::BrokerLite(broker_lite(config).await?),
        BrokerKind::Nats => RelayPublisher::Nats(Box::new(nats(config).await?)),
        BrokerKind::RabbitMq => RelayPublisher::RabbitMq(rabbitmq(config).await?),
    })
}

/// broker-lite with the configured timeouts, retries and one-way topics. The publisher fails any
/// publish answered with a status other than `SEND_OK` (P1): the relay then retries the message
/// instead of deleting it.
async fn broker_lite(config: &Config) -> anyhow::Result<BrokerLitePublisher> {
    let mut settings = ProducerConfig::default();
    settings.send_timeout = config.send_timeout();
    settings.retries = config.broker.retries;
    settings.oneway_topics = config.broker.oneway_topics.iter().cloned().collect();
    settings.security = config.broker_lite_security()?;
    let publisher = BrokerLitePublisher::connect(config.broker.addresses.as_str(), settings)
        .await
        .with_context(|| {
            format!(
                "cannot reach broker-lite at {}: start it, or fix broker.addresses",
                config.broker.addresses
            )
        })?;
    Ok(publisher)
}

/// NATS JetStream, waiting `broker.send_timeout_ms` for each PubAck. Retries are the relay's
/// (every publish carries `Nats-Msg-Id`, so a retry within the duplicate window is stored once).
pub(crate) async fn nats(config: &Config) -> anyhow::Result<NatsPublisher> {
    let publisher = NatsPublisher::connect(config.broker.addresses.trim())
        .await
        .with_context(|| {
            format!(
                "cannot reach NATS at {}: start it, or fix broker.addresses",
                config.broker.addresses
            )
        })?;
    Ok(publisher.with_ack_timeout(config.send_timeout()))
}

/// RabbitMQ, waiting `broker.send_timeout_ms` for each publisher confirm (always on, with
/// `mandatory`: an unroutable message fails its publish). Retries are the relay's.
async fn rabbitmq(config: &Config) -> anyhow::Result<RabbitMqPublisher> {
    let publisher = RabbitMqPublisher::connect(config.broker.addresses.trim())
        .await
        .context("start RabbitMQ, or fix broker.addresses")?;
    Ok(publisher.confirm_timeout(config.send_timeout()))
}
