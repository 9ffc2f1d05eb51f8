//! One code path from a broker address to a publisher and a delivery source: the address's form
//! picks the broker, so an application (and the examples) runs against broker-lite, NATS
//! JetStream or RabbitMQ by changing only the address.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use courier_core::Message;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt};

use super::any_source::AnySource;

/// A broker, by its address: `nats://host:port` (or `tls://`) for NATS JetStream,
/// `amqp://user:password@host:port/vhost` (or `amqps://`) for RabbitMQ, `host:port[;host:port]`
/// for broker-lite. The same rule as `outbox-relay --broker`.
///
/// ```
/// use courier_middleware::BrokerAddress;
///
/// let nats: BrokerAddress = "nats://127.0.0.1:4222".parse()?;
/// assert_eq!(nats.kind(), "NATS JetStream");
/// let rabbit: BrokerAddress = "amqp://guest:secret@127.0.0.1:5672/%2f".parse()?;
/// assert_eq!(rabbit.to_string(), "amqp://127.0.0.1:5672/%2f", "no password in logs");
/// let lite: BrokerAddress = "127.0.0.1:9876".parse()?;
/// assert_eq!(lite.kind(), "broker-lite");
/// assert!("127.0.0.1".parse::<BrokerAddress>().unwrap_err().to_string().contains("host:port"));
/// # Ok::<(), courier_middleware::BrokerAddressError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerAddress {
    /// broker-lite: `host:port`, several separated by `;` (failover order).
    BrokerLite(String),
    /// NATS JetStream: `nats://…` or `tls://…`, several separated by `,`.
    Nats(String),
    /// RabbitMQ: `amqp://…` or `amqps://…`.
    RabbitMq(String),
}

/// An address [`BrokerAddress`] cannot read.
#[derive(Debug, thiserror::Error)]
#[error(
    "broker address {address:?} {problem}: give nats://host:port (NATS JetStream), \
     amqp://user:password@host:port/vhost (RabbitMQ) or host:port (broker-lite)"
)]
pub struct BrokerAddressError {
    address: String,
    problem: &'static str,
}

impl FromStr for BrokerAddress {
    type Err = BrokerAddressError;

    fn from_str(address: &str) -> Result<Self, Self::Err> {
        let address = address.trim();
        let refuse = |problem| BrokerAddressError {
            address: address.to_owned(),
            problem,
        };
        if address.is_empty() {
            return Err(refuse("is empty"));
        }
        if let Some((scheme, _)) = address.split_once("://") {
            return match scheme {
                "nats" | "tls" => Ok(Self::Nats(address.to_owned())),
                "amqp" | "amqps" => Ok(Self::RabbitMq(address.to_owned())),
                _ => Err(refuse("has a scheme no adapter speaks")),
            };
        }
        let valid = |a: &str| {
            a.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            })
        };
        let mut parts = address.split(';').map(str::trim).filter(|a| !a.is_empty());
        if !parts.all(valid) {
            return Err(refuse("is not host:port"));
        }
        Ok(Self::BrokerLite(address.to_owned()))
    }
}

impl fmt::Display for BrokerAddress {
    /// The address without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = self.as_str();
        match address.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                write!(f, "{scheme}://{host}")
            }
            None => f.write_str(address),
        }
    }
}

impl fmt::Debug for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerAddress({self})")
    }
}

/// The relay-side publisher of any broker: `Ok` only once the broker took responsibility for the
/// message (broker-lite `SEND_OK`, a JetStream PubAck, a RabbitMQ publisher confirm).
pub type AnyPublisher = BoxCloneSyncService<Message, Published, BoxError>;

/// What the broker answered a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The broker already had this message id and stored nothing new (NATS, within the stream's
    /// duplicate window). Always `false` for brokers that do not deduplicate publishes.
    pub deduplicated: bool,
}

impl Published {
    /// Stored, and not known to be a duplicate: what brokers that do not deduplicate answer.
    ///
    /// ```
    /// assert!(!courier_middleware::Published::STORED.deduplicated);
    /// ```
    pub const STORED: Self = Self {
        deduplicated: false,
    };
}

/// What a consumer subscribes to, and how its broker redelivers: the same settings on every
/// broker.
///
/// What [`BrokerAddress::subscribe`] provisions for it:
///
/// | broker | provisioned |
/// |---|---|
/// | broker-lite | nothing (the broker creates topics and groups); the delays are the broker's, see [`broker_lite_redelivery`](Self::broker_lite_redelivery) |
/// | NATS | the stream [`StreamSpec::for_topic`](crate::nats::StreamSpec::for_topic), a durable pull consumer named after the group, the dead-letter stream `<stream>_DEAD_LETTERS` |
/// | RabbitMQ | the durable topic exchange `<topic>`, the quorum queue `<group>` bound to it, its delay queues and `<group>.dlq` |
///
/// ```
/// use std::time::Duration;
/// use courier_middleware::Subscription;
///
/// let payments = Subscription::new("ORDER_CREATED", "payments")
///     .max_deliveries(3)
///     .delays([Duration::from_millis(100), Duration::from_millis(400)]);
/// assert_eq!(payments.group(), "payments");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    topic: String,
    group: String,
    max_deliveries: u32,
    delays: Vec<Duration>,
    #[cfg(feature = "broker-lite")]
    broker_lite_redelivery: Option<broker_lite_client::Redelivery>,
}

impl Subscription {
    /// Group `group` consumes `topic`; [`DEFAULT_MAX_DELIVERIES`](crate::DEFAULT_MAX_DELIVERIES),
    /// each broker's default delays.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            max_deliveries: crate::DEFAULT_MAX_DELIVERIES,
            delays: Vec::new(),
            #[cfg(feature = "broker-lite")]
            broker_lite_redelivery: None,
        }
    }

    /// A message whose delivery number `n` fails is dead-lettered; give the runtime the same
    /// (`Consumer::builder(..).max_deliveries(n)`).
    #[must_use]
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The waits before the first, second … redelivery (NATS nak delays, RabbitMQ delay
    /// queues). broker-lite's delays are the broker's own configuration.
    #[must_use]
    pub fn delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.delays = delays.into_iter().collect();
        self
    }

    /// broker-lite only: the redelivery schedule the broker was started with (an embedded
    /// broker's `&BrokerConfig` converts), so the source picks the right delay levels.
    #[cfg(feature = "broker-lite")]
    #[must_use]
    pub fn broker_lite_redelivery(
        mut self,
        schedule: impl Into<broker_lite_client::Redelivery>,
    ) -> Self {
        self.broker_lite_redelivery = Some(schedule.into());
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    #[cfg(feature = "nats")]
    fn nats_config(&self) -> crate::nats::NatsSourceConfig {
        let stream = crate::nats::StreamSpec::for_topic(&self.topic);
        crate::nats::NatsSourceConfig::new(stream.name(), &self.group)
            .max_deliveries(self.max_deliveries)
            .delays(self.delays.iter().copied())
    }

    #[cfg(feature = "rabbitmq")]
    fn rabbitmq_config(&self) -> crate::RabbitMqSourceConfig {
        let config = crate::RabbitMqSourceConfig::new(&self.group)
            .bind(&self.topic, "#")
            .max_deliveries(self.max_deliveries);
        match self.delays.is_empty() {
            true => config,
            false => config.delay_levels(self.delays.iter().copied()),
        }
    }
}

impl BrokerAddress {
    /// `"broker-lite"`, `"NATS JetStream"` or `"RabbitMQ"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BrokerLite(_) => "broker-lite",
            Self::Nats(_) => "NATS JetStream",
            Self::RabbitMq(_) => "RabbitMQ",
        }
    }

    /// The address as given, password included.
    pub fn as_str(&self) -> &str {
        match self {
            Self::BrokerLite(a) | Self::Nats(a) | Self::RabbitMq(a) => a,
        }
    }

    /// A publisher with the adapter's safe defaults, for the outbox relay
    /// (`Relay::builder(pool, publisher.map_response(drop))`) or a producer.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tower::BoxError> {
    /// use courier_middleware::BrokerAddress;
    /// use courier_outbox::Message;
    /// use tower::ServiceExt;
    ///
    /// let broker: BrokerAddress = std::env::var("BROKER")?.parse()?;
    /// let published = broker.publisher().await?.oneshot(Message::new("ORDER_CREATED", "{}")).await?;
    /// println!("stored (deduplicated: {})", published.deduplicated);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The broker cannot be reached, or this build lacks the broker's cargo feature.
    pub async fn publisher(&self) -> Result<AnyPublisher, BoxError> {
        match self {
            #[cfg(feature = "broker-lite")]
            Self::BrokerLite(address) => {
                let config = broker_lite_client::ProducerConfig::default();
                let publisher = crate::BrokerLitePublisher::connect(address.as_str(), config)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                Ok(BoxCloneSyncService::new(publisher.map_response(
                    |result: broker_lite_client::protocol::SendResult| Published {
                        deduplicated: result.duplicate,
                    },
                )))
            }
            #[cfg(feature = "nats")]
            Self::Nats(url) => {
                let publisher = crate::NatsPublisher::connect(url)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                Ok(BoxCloneSyncService::new(publisher.map_response(|ack| {
                    Published {
                        deduplicated: ack.duplicate,
                    }
                })))
            }
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(url) => {
                let publisher = crate::RabbitMqPublisher::connect(url.as_str()).await?;
                Ok(BoxCloneSyncService::new(
                    publisher.map_response(|()| Published::STORED),
                ))
            }
            #[allow(unreachable_patterns)]
            _ => Err(self.not_built()),
        }
    }

    /// A delivery source for `subscription`, provisioning what the broker needs first (see
    /// [`Subscription`]); give it to [`Consumer::builder`](crate::Consumer::builder).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tower::BoxError> {
    /// use courier_middleware::{BrokerAddress, Consumer, Delivery, Subscription};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let broker: BrokerAddress = "nats://127.0.0.1:4222".parse()?;
    /// let source = broker.subscribe(&Subscription::new("ORDER_CREATED", "payments")).await?;
    /// let handler = tower::service_fn(|delivery: Delivery| async move {
    ///     println!("{}", delivery.message.id);
    ///     Ok::<_, tower::BoxError>(())
    /// });
    /// Consumer::builder(source, handler).build().run(CancellationToken::new()).await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The broker cannot be reached, existing topology contradicts the subscription (NATS
    /// `TopologyError::Contradicts`, RabbitMQ `TopologyConflict`, both naming the field), or
    /// this build lacks the broker's cargo feature.
    pub async fn subscribe(&self, subscription: &Subscription) -> Result<AnySource, BoxError> {
        match self {
            #[cfg(feature = "broker-lite")]
            Self::BrokerLite(address) => {
                let config = broker_lite_client::ConsumerConfig::new(
                    &subscription.group,
                    &subscription.topic,
                );
                let mut source = crate::BrokerLiteSource::connect(address.as_str(), config)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                if let Some(schedule) = &subscription.broker_lite_redelivery {
                    source = source.with_broker_config(schedule.clone());
                }
                Ok(AnySource::BrokerLite(source))
            }
            #[cfg(feature = "nats")]
            Self::Nats(url) => {
                let client = async_nats::connect(url.as_str())
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let jetstream = async_nats::jetstream::new(client);
                crate::nats::StreamSpec::for_topic(&subscription.topic)
                    .ensure(&jetstream)
                    .await?;
                let source = crate::NatsSource::new(jetstream, subscription.nats_config()).await?;
                Ok(AnySource::Nats(source))
            }
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(url) => {
                let config = subscription.rabbitmq_config();
                let source = crate::RabbitMqSource::connect(url.as_str(), config).await?;
                Ok(AnySource::RabbitMq(source))
            }
            #[allow(unreachable_patterns)]
            _ => Err(self.not_built()),
        }
    }

    /// How many messages `subscription`'s group has dead-lettered (broker-lite: up to 1000),
    /// looked up in the broker: `%DLQ%<group>`, the NATS dead-letter stream's subject of the
    /// group, the RabbitMQ queue `<group>.dlq`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tower::BoxError> {
    /// use courier_middleware::{BrokerAddress, Subscription};
    ///
    /// let broker: BrokerAddress = "amqp://guest:guest@127.0.0.1:5672/%2f".parse()?;
    /// let dead = broker.dead_letter_count(&Subscription::new("ORDER_CREATED", "payments")).await?;
    /// println!("{dead} dead letters");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The broker cannot be reached, or this build lacks the broker's cargo feature.
    pub async fn dead_letter_count(&self, subscription: &Subscription) -> Result<u64, BoxError> {
        match self {
            #[cfg(feature = "broker-lite")]
            Self::BrokerLite(address) => {
                let config = broker_lite_client::AdminConfig::default();
                let admin = broker_lite_client::Admin::connect(address.as_str(), config).await?;
                let dead = admin.dead_letters(&subscription.group, 1000).await?;
                Ok(dead.len() as u64)
            }
            #[cfg(feature = "nats")]
            Self::Nats(url) => {
                use futures::TryStreamExt;
                let config = subscription.nats_config();
                let Some(stream) = config.dead_letter_stream() else {
                    return Ok(0);
                };
                let jetstream =
                    async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
                let Ok(stream) = jetstream.get_stream(stream).await else {
                    return Ok(0);
                };
                let subjects = stream
                    .info_with_subjects(config.dead_letter_subject_name())
                    .await?;
                let counts: Vec<(String, usize)> = subjects.try_collect().await?;
                Ok(counts.iter().map(|(_, n)| *n as u64).sum())
            }
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(url) => {
                use lapin::options::QueueDeclareOptions;
                let properties = lapin::ConnectionProperties::default();
                let connection = lapin::Connection::connect(url, properties).await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let queue = subscription.rabbitmq_config().dead_letter_queue();
                let found = connection
                    .create_channel()
                    .await?
                    .queue_declare(&queue, passive, Default::default())
                    .await;
                let _ = connection.close(200, "counted").await;
                match found {
                    Ok(queue) => Ok(u64::from(queue.message_count())),
                    Err(error) if super::rabbitmq::is_not_found(&error) => Ok(0),
                    Err(error) => Err(error.into()),
                }
            }
            #[allow(unreachable_patterns)]
            _ => Err(self.not_built()),
        }
    }

    /// Deletes, with their messages, the streams or queues [`subscribe`](Self::subscribe)
    /// provisioned for `subscription` (NATS: the topic's stream and the dead-letter stream;
    /// RabbitMQ: the work, delay and dead-letter queues and the exchange); broker-lite keeps its
    /// topics. For demonstrations and tests that used names of their own; never for shared
    /// topics, whose messages other consumers still need. Returns what it deleted.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tower::BoxError> {
    /// use courier_middleware::{BrokerAddress, Subscription};
    ///
    /// let broker: BrokerAddress = "nats://127.0.0.1:4222".parse()?;
    /// let deleted = broker.remove_provisioned(&Subscription::new("demo-7f3a", "demo-7f3a")).await?;
    /// println!("deleted {deleted:?}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The broker cannot be reached or refused a deletion, or this build lacks the broker's
    /// cargo feature.
    pub async fn remove_provisioned(
        &self,
        subscription: &Subscription,
    ) -> Result<Vec<String>, BoxError> {
        match self {
            #[cfg(feature = "broker-lite")]
            Self::BrokerLite(_) => {
                // Topics and groups stay: broker-lite has no deletion to offer here.
                let _ = subscription;
                Ok(Vec::new())
            }
            #[cfg(feature = "nats")]
            Self::Nats(url) => {
                let jetstream =
                    async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
                let config = subscription.nats_config();
                let mut deleted = Vec::new();
                for stream in [Some(config.stream()), config.dead_letter_stream()]
                    .into_iter()
                    .flatten()
                {
                    if jetstream.get_stream(stream).await.is_ok() {
                        jetstream.delete_stream(stream).await?;
                        deleted.push(format!("stream {stream}"));
                    }
                }
                Ok(deleted)
            }
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(url) => {
                let properties = lapin::ConnectionProperties::default();
                let connection = lapin::Connection::connect(url, properties).await?;
                let channel = connection.create_channel().await?;
                let topology = subscription.rabbitmq_config().topology();
                let mut deleted = Vec::new();
                for queue in topology.queues() {
                    channel
                        .queue_delete(queue.name(), Default::default())
                        .await?;
                    deleted.push(format!("queue {}", queue.name()));
                }
                for exchange in topology.exchanges() {
                    channel
                        .exchange_delete(exchange, Default::default())
                        .await?;
                    deleted.push(format!("exchange {exchange}"));
                }
                let _ = connection.close(200, "removed").await;
                Ok(deleted)
            }
            #[allow(unreachable_patterns)]
            _ => Err(self.not_built()),
        }
    }

    #[allow(dead_code)]
    fn unreachable(&self, error: impl Into<BoxError>) -> BoxError {
        let error = error.into();
        format!(
            "cannot reach {} at {self}: {error}; start it, or fix the address",
            self.kind()
        )
        .into()
    }

    #[allow(dead_code)]
    fn not_built(&self) -> BoxError {
        let feature = match self {
            Self::BrokerLite(_) => "broker-lite",
            Self::Nats(_) => "nats",
            Self::RabbitMq(_) => "rabbitmq",
        };
        format!(
            "{self} is a {} address but this build has no {} support: enable the `{feature}` \
             feature of courier (or courier-middleware)",
            self.kind(),
            self.kind()
        )
        .into()
    }
}
