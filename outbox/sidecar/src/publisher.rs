//! The relay's publisher: broker-lite's producer, with anything but `SEND_OK` an error.

use anyhow::Context as _;
use broker_lite_client::ProducerConfig;
use courier_middleware::BrokerLitePublisher;

use crate::config::Config;

/// Connects to broker-lite with the configured timeouts, retries and one-way topics. The
/// publisher fails any publish answered with a status other than `SEND_OK` (P1): the relay then
/// retries the message instead of deleting it.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<BrokerLitePublisher> {
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
    Ok(publisher)
}
