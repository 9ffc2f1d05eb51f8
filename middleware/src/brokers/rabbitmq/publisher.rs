//! The RabbitMQ publisher: the envelope in, a publisher confirm out.
//!
//! Safe by default, with nothing to switch on: every channel is in confirm mode and every
//! publish waits for its confirmation; `mandatory` is set, so a message no queue is bound for
//! comes back, and a returned message is a failure even though the broker then acks it;
//! messages are persistent. None of it can be turned off.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use courier_core::Message;
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel, ConnectionProperties};
use tokio::sync::Semaphore;
use tower::{BoxError, Service};
use uuid::Uuid;

use super::connection::Reconnecting;
use super::{RabbitMqError, envelope};
use crate::boxed::BoxResponseFuture;

/// How long a publish waits for its confirmation unless configured: 30 s.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Publishes in flight at once (one per channel) unless configured: 256.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// A `tower::Service<Message>` that publishes each envelope to RabbitMQ and answers once the
/// broker confirmed it: the publisher the outbox relay (and a [`crate::Producer`]) publishes
/// through.
///
/// - **Routing**: to the exchange named after `Message::topic`, with the tag as routing key (the
///   topic when there is none), so queues bind to a topic exchange with `#` for everything or a
///   tag pattern for a filter. [`RabbitMqTopology`](super::RabbitMqTopology) declares both ends.
/// - **Confirms** (always on): `Ok` only for a broker ack of this very message. A nack, a
///   confirm that does not arrive within the confirm timeout (30 s), or a broken connection or
///   channel before the ack is an error: the relay keeps the row and publishes it again.
/// - **Mandatory** (always on): a message no queue is bound for comes back
///   ([`RabbitMqError::Unroutable`]); RabbitMQ acks it anyway, the publisher does not.
/// - **Persistent** delivery mode, `message_id` = the envelope id (consumers deduplicate on it),
///   key, tag, topic and creation time as `courier-*` headers, the envelope's headers (such as
///   `traceparent`) as AMQP headers.
/// - **One publish in flight per channel**, on a pool of confirm-mode channels over one
///   connection: RabbitMQ may confirm several messages of a channel at once and lapin attaches a
///   returned message to whichever confirmation comes next, so with one message per channel
///   the return and the nack can only belong to that message. Concurrency comes from the pool
///   (the relay drives one clone per ordering key at once).
/// - **Recovery**: a broken channel is dropped; a broken connection is reopened on the next
///   publish. A refused or lost connection is [`Unavailable`](courier_core::Unavailable) (the
///   relay pauses and probes instead of counting attempts).
///
/// Clones share the connection and the pool.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), tower::BoxError> {
/// use courier_middleware::RabbitMqPublisher;
/// use courier_core::Message;
/// use tower::ServiceExt;
///
/// let publisher = RabbitMqPublisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// publisher.oneshot(Message::new("orders", r#"{"id":7}"#)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RabbitMqPublisher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    connection: Reconnecting,
    /// Confirm-mode channels with no publish in flight.
    idle: Mutex<Vec<Channel>>,
    /// One permit per publish in flight, so at most that many channels.
    in_flight: Semaphore,
    confirm_timeout: Duration,
}

/// Where a message goes: the exchange and routing key of `basic.publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
}

impl RabbitMqPublisher {
    /// A publisher for the broker at `uri` (`amqp://user:password@host:5672/vhost`), connecting
    /// on the first publish. See [`connect`](Self::connect) to fail fast instead.
    pub fn new(uri: impl Into<String>) -> Self {
        Self::with_properties(uri, ConnectionProperties::default())
    }

    /// As [`new`](Self::new), with lapin's connection properties (client name, executor, ...).
    /// TLS is chosen by the URL (`amqps://`) once a lapin TLS feature is enabled.
    pub fn with_properties(uri: impl Into<String>, properties: ConnectionProperties) -> Self {
        Self {
            shared: Arc::new(Shared {
                connection: Reconnecting::new(uri, properties),
                idle: Mutex::new(Vec::new()),
                in_flight: Semaphore::new(DEFAULT_MAX_IN_FLIGHT),
                confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            }),
        }
    }

    /// Connects now, so that a wrong URL or an unreachable broker shows at start-up.
    ///
    /// # Errors
    ///
    /// [`RabbitMqError::Connect`] when the broker cannot be reached or refuses the login.
    pub async fn connect(uri: impl Into<String>) -> Result<Self, RabbitMqError> {
        let publisher = Self::new(uri);
        let channel = publisher.shared.connection.confirm_channel().await?;
        publisher.shared.check_in(channel);
        Ok(publisher)
    }

    /// How long a publish waits for its confirmation before it fails (and is published again).
    /// Default [`DEFAULT_CONFIRM_TIMEOUT`]. Set it before cloning the publisher.
    #[must_use]
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.shared_mut().confirm_timeout = timeout;
        self
    }

    /// At most `n` publishes in flight at once, each on its own channel (at least 1). Default
    /// [`DEFAULT_MAX_IN_FLIGHT`]; RabbitMQ allows 2047 channels per connection by default. Set it
    /// before cloning the publisher.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.shared_mut().in_flight = Semaphore::new(n.max(1));
        self
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.shared)
            .expect("configure the publisher before cloning it or publishing through it")
    }

    /// Publishes `message` and waits for its confirmation.
    ///
    /// # Errors
    ///
    /// See the type's documentation; a [`RabbitMqError`] inside, wrapped in
    /// [`Unavailable`](courier_core::Unavailable) when the broker cannot be reached.
    pub async fn publish(&self, message: Message) -> Result<(), BoxError> {
        let route = Route {
            exchange: &message.topic,
            routing_key: envelope::routing_key(&message),
        };
        self.shared
            .publish(
                route,
                &message.payload,
                envelope::properties(&message),
                message.id,
            )
            .await
            .map_err(RabbitMqError::into_publish_error)
    }

    /// Publishes a raw AMQP message with the same guarantees (confirm awaited, mandatory); the
    /// source's delay and dead-letter copies go through it.
    pub(crate) async fn publish_raw(
        &self,
        route: Route<'_>,
        payload: &[u8],
        properties: BasicProperties,
        id: Uuid,
    ) -> Result<(), RabbitMqError> {
        self.shared.publish(route, payload, properties, id).await
    }

    /// Closes the connection; a later publish opens a new one.
    pub async fn close(&self) {
        self.shared.idle.lock().expect("never poisoned").clear();
        self.shared.connection.close().await;
    }
}

impl Shared {
    async fn publish(
        &self,
        route: Route<'_>,
        payload: &[u8],
        properties: BasicProperties,
        id: Uuid,
    ) -> Result<(), RabbitMqError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let channel = self.check_out().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = tokio::time::timeout(self.confirm_timeout, async {
            channel
                .basic_publish(
                    route.exchange,
                    route.routing_key,
                    options,
                    payload,
                    properties,
                )
                .await?
                .await
        })
        .await;
        let confirmation = match confirmed {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(source)) => {
                // The channel (or the connection under it) broke; it is not reused.
                return Err(RabbitMqError::operation("publish")(source));
            }
            Err(_) => {
                // A late confirmation would belong to nobody: retire the channel.
                tokio::spawn(async move {
                    let _ = channel.close(200, "confirm timed out").await;
                });
                return Err(RabbitMqError::ConfirmTimeout {
                    message_id: id,
                    after: self.confirm_timeout,
                });
            }
        };
        let outcome = judge(confirmation, id, &route);
        self.check_in(channel);
        outcome
    }

    /// An idle channel that is still open, or a new one.
    async fn check_out(&self) -> Result<Channel, RabbitMqError> {
        loop {
            let idle = self.idle.lock().expect("never poisoned").pop();
            match idle {
                Some(channel) if channel.status().connected() => return Ok(channel),
                Some(_) => continue,
                None => return self.connection.confirm_channel().await,
            }
        }
    }

    fn check_in(&self, channel: Channel) {
        if channel.status().connected() {
            self.idle.lock().expect("never poisoned").push(channel);
        }
    }
}

/// `Ok` for a plain ack of this publish; an error for a nack or a returned message.
fn judge(confirmation: Confirmation, id: Uuid, route: &Route<'_>) -> Result<(), RabbitMqError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(RabbitMqError::Unroutable {
                message_id: id,
                exchange: route.exchange.to_owned(),
                routing_key: route.routing_key.to_owned(),
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.as_str().to_owned(),
            })
        }
        Confirmation::Nack(None) => Err(RabbitMqError::Nacked { message_id: id }),
        // Only a channel without confirm mode answers this; the pool never has one.
        Confirmation::NotRequested => Err(RabbitMqError::Nacked { message_id: id }),
    }
}

impl Service<Message> for RabbitMqPublisher {
    type Response = ();
    type Error = BoxError;
    type Future = BoxResponseFuture<()>;

    /// Always ready: back-pressure comes from the bound on publishes in flight, inside the call.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let publisher = self.clone();
        BoxResponseFuture::new(Box::pin(async move { publisher.publish(message).await }))
    }
}
