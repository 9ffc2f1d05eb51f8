//! The consumer client: subscribe, pull with long polling, ack, nack, heartbeats.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use uuid::Uuid;

use super::endpoints::{Addresses, ConnectOptions, Endpoints};
use super::error::{ClientError, Result};
use super::security::Security;
use crate::protocol::{
    AckRequest, ConsumeModel, DEFAULT_MAX_FRAME_SIZE, DeadLetterRequest, Delivery, ErrorCode,
    Member, NackRequest, NackResult, PullRequest, Request, Response, Subscription,
};

/// Consumer settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Consumer group.
    pub group: String,
    /// Topic to consume.
    pub topic: String,
    /// This member's id. Default: a fresh UUID.
    pub consumer_id: String,
    /// Clustering (default) or broadcasting (C5).
    pub model: ConsumeModel,
    /// Only messages with one of these tags. Default: empty, all messages.
    pub tags: Vec<String>,
    /// Ordered consumption: at most one message per queue in flight. Default false.
    pub ordered: bool,
    /// How often the membership is renewed. Default 10 s.
    pub heartbeat_interval: Duration,
    /// How long a request other than the long poll itself may take. Default 5 s.
    pub request_timeout: Duration,
    /// How long connecting to one address may take. Default 3 s.
    pub connect_timeout: Duration,
    /// Largest frame accepted from the broker. Default 8 MiB.
    pub max_frame_size: u32,
    /// Credentials and TLS for the broker (issue 16). Default: neither, for a broker on
    /// loopback that runs open.
    pub security: Security,
}

impl ConsumerConfig {
    /// A clustering consumer of `topic` in `group`, with defaults.
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        ConsumerConfig {
            group: group.into(),
            topic: topic.into(),
            consumer_id: Uuid::now_v7().to_string(),
            model: ConsumeModel::Clustering,
            tags: Vec::new(),
            ordered: false,
            heartbeat_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            security: Security::default(),
        }
    }
}

/// A member of a consumer group.
///
/// Subscribes on [`Consumer::connect`] and renews its membership in the background; leaves the
/// group on [`Consumer::close`]. Acknowledge each delivery with [`Consumer::ack`] only after the
/// work succeeded, or ask for a redelivery with [`Consumer::nack`] (C1).
///
/// ```no_run
/// use std::time::Duration;
/// use broker_lite_client::{Consumer, ConsumerConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let consumer = Consumer::connect("127.0.0.1:9876", ConsumerConfig::new("billing", "orders")).await?;
/// for delivery in consumer.pull(1, Duration::from_secs(20)).await? {
///     println!("{:?}", delivery.message.body);
///     consumer.ack(&delivery).await?;
/// }
/// consumer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    endpoints: Arc<Endpoints>,
    config: Arc<ConsumerConfig>,
    heartbeat: JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl Consumer {
    /// Connects and subscribes.
    ///
    /// # Errors
    ///
    /// A connection error, or the broker's refusal of the subscription.
    pub async fn connect(
        addresses: impl Into<Addresses>,
        config: ConsumerConfig,
    ) -> Result<Consumer> {
        let options = ConnectOptions {
            connect_timeout: config.connect_timeout,
            max_frame_size: config.max_frame_size,
            security: config.security.clone(),
        };
        let endpoints = Arc::new(Endpoints::new(addresses.into(), options)?);
        let config = Arc::new(config);
        subscribe(&endpoints, &config).await?;
        let heartbeat = tokio::spawn(heartbeat_loop(endpoints.clone(), config.clone()));
        Ok(Consumer {
            endpoints,
            config,
            heartbeat,
        })
    }

    /// This consumer's settings.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Pulls up to `max` deliveries, letting the broker wait up to `long_poll` when none is ready.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn pull(&self, max: u32, long_poll: Duration) -> Result<Vec<Delivery>> {
        let request = Request::Pull(PullRequest {
            group: self.config.group.clone(),
            consumer_id: self.config.consumer_id.clone(),
            topic: self.config.topic.clone(),
            max_messages: max,
            long_poll_ms: long_poll.as_millis() as u64,
        });
        let timeout = long_poll + self.config.request_timeout;
        let response = match self.endpoints.call_failover(&request, timeout).await {
            // The broker forgot this member (restart, failover, missed heartbeats): join again.
            Err(ClientError::Server(reply)) if reply.code == ErrorCode::NotFound => {
                tracing::warn!(group = %self.config.group, error = %reply, "subscribing again before pulling");
                subscribe(&self.endpoints, &self.config).await?;
                self.endpoints.call_failover(&request, timeout).await?
            }
            other => other?,
        };
        match response {
            Response::Pull(deliveries) => Ok(deliveries),
            _ => Err(ClientError::UnexpectedResponse("pull")),
        }
    }

    /// Acknowledges `delivery`: the work is done (`CONSUME_SUCCESS`).
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal (unknown or expired receipt).
    pub async fn ack(&self, delivery: &Delivery) -> Result<()> {
        let request = Request::Ack(AckRequest {
            group: self.config.group.clone(),
            receipt: delivery.receipt.clone(),
        });
        self.done(&request, "ack").await
    }

    /// Asks for `delivery` to be redelivered later (`RECONSUME_LATER`); `delay_level` `None`
    /// lets the broker pick the next level by the reconsume count. Tells whether the message
    /// will be redelivered or went to the dead-letter topic.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal.
    pub async fn nack(&self, delivery: &Delivery, delay_level: Option<u32>) -> Result<NackResult> {
        let request = Request::Nack(NackRequest {
            group: self.config.group.clone(),
            receipt: delivery.receipt.clone(),
            delay_level,
        });
        match self
            .endpoints
            .call_failover(&request, self.config.request_timeout)
            .await?
        {
            Response::Nacked(result) => Ok(result),
            _ => Err(ClientError::UnexpectedResponse("nack")),
        }
    }

    /// Moves `delivery` to the group's dead-letter topic `%DLQ%<group>` at once, with `reason`:
    /// the work failed for good (a malformed message), so redelivering it cannot help (C8).
    /// It can be listed and re-driven like any dead letter
    /// ([`Admin::dead_letters`](super::Admin::dead_letters)).
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal (unknown or expired receipt); the message is
    /// then redelivered as after a consume timeout, never lost.
    pub async fn dead_letter(&self, delivery: &Delivery, reason: Option<&str>) -> Result<()> {
        let request = Request::DeadLetter(DeadLetterRequest {
            group: self.config.group.clone(),
            receipt: delivery.receipt.clone(),
            reason: reason.map(str::to_string),
        });
        self.done(&request, "dead letter").await
    }

    /// Leaves the group and stops the heartbeats.
    ///
    /// # Errors
    ///
    /// A connection error or the broker's refusal; the heartbeats stop anyway.
    pub async fn close(self) -> Result<()> {
        self.heartbeat.abort();
        let request = Request::Unsubscribe(member(&self.config));
        self.done(&request, "unsubscribe").await
    }

    async fn done(&self, request: &Request, what: &'static str) -> Result<()> {
        match self
            .endpoints
            .call_failover(request, self.config.request_timeout)
            .await?
        {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse(what)),
        }
    }
}

fn member(config: &ConsumerConfig) -> Member {
    Member {
        group: config.group.clone(),
        consumer_id: config.consumer_id.clone(),
    }
}

async fn subscribe(endpoints: &Endpoints, config: &ConsumerConfig) -> Result<()> {
    let request = Request::Subscribe(Subscription {
        group: config.group.clone(),
        topic: config.topic.clone(),
        consumer_id: config.consumer_id.clone(),
        model: config.model,
        tags: config.tags.clone(),
        ordered: config.ordered,
    });
    endpoints
        .call_failover(&request, config.request_timeout)
        .await?;
    Ok(())
}

/// Renews the membership; after a failure (broker restarted, failover) subscribes again.
async fn heartbeat_loop(endpoints: Arc<Endpoints>, config: Arc<ConsumerConfig>) {
    let mut interval = tokio::time::interval(config.heartbeat_interval);
    interval.tick().await;
    loop {
        interval.tick().await;
        let request = Request::Heartbeat(member(&config));
        if let Err(error) = endpoints
            .call_failover(&request, config.request_timeout)
            .await
        {
            tracing::warn!(group = %config.group, error = %super::error::chain(&error), "heartbeat failed; subscribing again");
            if let Err(error) = subscribe(&endpoints, &config).await {
                tracing::warn!(group = %config.group, error = %super::error::chain(&error), "subscribing again failed");
            }
        }
    }
}
