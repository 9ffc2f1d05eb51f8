//! The relay's publisher: broker-lite's producer as a `tower::Service<Message>`.

use std::future::Future;
use std::pin::Pin;

use anyhow::Context as _;
use broker_lite::client::{Producer, ProducerConfig};
use broker_lite::protocol::{self, SendStatus};
use courier::outbox::Message;
use tower::BoxError;

use crate::config::Config;

/// Connects a producer with the configured timeouts, retries and one-way topics.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<Producer> {
    let mut settings = ProducerConfig::default();
    settings.send_timeout = config.send_timeout();
    settings.retries = config.broker.retries;
    settings.oneway_topics = config.broker.oneway_topics.iter().cloned().collect();
    Producer::connect(config.broker.addresses.as_str(), settings)
        .await
        .with_context(|| {
            format!(
                "cannot reach broker-lite at {}: start it, or fix broker.addresses",
                config.broker.addresses
            )
        })
}

/// A publisher that succeeds only on `SEND_OK` (P1): any other status is an error, so the relay
/// retries the message rather than deleting it.
pub(crate) fn broker_lite(producer: Producer) -> impl courier::outbox::Publisher {
    tower::service_fn(move |message: Message| {
        let producer = producer.clone();
        let sending: Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> =
            Box::pin(async move {
                let mut outgoing = protocol::Message::new(message.topic, message.payload);
                outgoing.message_id = Some(message.id);
                outgoing.key = message.key;
                outgoing.tag = message.tag;
                outgoing.properties = message.headers;
                let result = producer.send(outgoing).await.map_err(|e| e.error)?;
                match result.status {
                    SendStatus::SendOk => Ok(()),
                    status => Err(format!("broker answered {status:?}, not SEND_OK").into()),
                }
            });
        sending
    })
}
