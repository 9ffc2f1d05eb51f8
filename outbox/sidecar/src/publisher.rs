//! The relay's publisher: broker-lite's producer, with anything but `SEND_OK` an error.

use anyhow::Context as _;
use broker_lite_client::ProducerConfig;
use courier_middleware::{BrokerLitePublisher, RequireSendOk};

use crate::config::Config;

/// Connects to broker-lite with the configured timeouts, retries and one-way topics, and wraps
/// the producer so that any status other than `SEND_OK` fails the publish (P1): the relay then
/// retries the message instead of deleting it.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<RequireSendOk<BrokerLitePublisher>> {
    let mut settings = ProducerConfig::default();
    settings.send_timeout = config.send_timeout();
    settings.retries = config.broker.retries;
    settings.oneway_topics = config.broker.oneway_topics.iter().cloned().collect();
    let publisher = BrokerLitePublisher::connect(config.broker.addresses.as_str(), settings)
        .await
        .with_context(|| {
            format!(
                "cannot reach broker-lite at {}: start it, or fix broker.addresses",
                config.broker.addresses
            )
        })?;
    Ok(RequireSendOk::new(publisher))
}
