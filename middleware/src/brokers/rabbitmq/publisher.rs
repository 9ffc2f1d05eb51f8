//! The RabbitMQ publisher: the envelope in, a publisher confirm out.
//!
//! Safe by default, with nothing to switch on: every channel is in confirm mode and every
//! publish waits for its confirmation; `mandatory` is set, so a message no queue is bound for
//! comes back, and a returned message is a failure even though the broker then acks it;
//! messages are persistent. None of it can be turned off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use courier_core::Message;
use courier_core::batch::{
    BatchFuture, NotAttempted, Outcomes, PublishBatch, fail_all, key_groups,
};
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
    /// The semaphore's size, and the keys of a batch published at once.
    max_in_flight: usize,
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
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
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
        self.shared_mut().max_in_flight = n.max(1);
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
        let outcome = self
            .publish_on(&channel, route, payload, properties, id)
            .await;
        match &outcome {
            Err(RabbitMqError::ConfirmTimeout { .. }) => retire(channel),
            // The channel (or the connection under it) broke; it is not reused.
            Err(RabbitMqError::Operation { .. }) => {}
            _ => self.check_in(channel),
        }
        outcome
    }

    /// Publishes on `channel` and waits for this message's confirmation; other publishes may be
    /// in flight on the same channel (confirms are matched by delivery tag).
    async fn publish_on(
        &self,
        channel: &Channel,
        route: Route<'_>,
        payload: &[u8],
        properties: BasicProperties,
        id: Uuid,
    ) -> Result<(), RabbitMqError> {
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
        match confirmed {
            Ok(Ok(confirmation)) => judge(confirmation, id, &route),
            Ok(Err(source)) => Err(RabbitMqError::operation("publish")(source)),
            Err(_) => Err(RabbitMqError::ConfirmTimeout {
                message_id: id,
                after: self.confirm_timeout,
            }),
        }
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

/// A late confirmation would belong to nobody: the channel is closed, not reused.
fn retire(channel: Channel) {
    tokio::spawn(async move {
        let _ = channel.close(200, "confirm timed out").await;
    });
}

/// A batch goes out on one channel with its confirms pipelined, in waves: the first message of
/// every key (up to the publisher's `max_in_flight` at once), then, once all of a wave is
/// confirmed, each key's next message, so a nacked or returned message never has a later
/// message of its key queued before it. Each confirmation is checked on its own: a nack, a
/// missing confirmation, or a return of an unroutable message (`mandatory`) fails only that
/// message. Returns are matched to their message by its `message_id` (the outbox id), not by
/// the confirmation lapin hands them to, which under a multiple ack can be another message's.
///
/// A publish to an exchange that does not exist closes the channel, so the other messages in
/// flight on it fail too (retryable), unlike single sends, which each have their own channel.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tower::BoxError> {
/// use courier_middleware::RabbitMqPublisher;
/// use courier_outbox::Relay;
///
/// let publisher = RabbitMqPublisher::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// let relay = Relay::batch_builder(pool, publisher).build()?;
/// # let _ = relay;
/// # Ok(()) }
/// ```
impl PublishBatch for RabbitMqPublisher {
    type Response = ();

    fn publish_batch(&mut self, messages: Vec<Message>) -> BatchFuture<()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let channel = match shared.check_out().await {
                Ok(channel) => channel,
                Err(error) => return fail_all(error.into_publish_error(), messages.len()),
            };
            let (outcomes, fate) = shared.publish_waves(&channel, &messages).await;
            match fate {
                Fate::Reuse => shared.check_in(channel),
                Fate::Retire => retire(channel),
                Fate::Broken => {}
            }
            outcomes
        })
    }
}

/// What becomes of a batch's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Reuse,
    /// A confirmation is missing; a late one would belong to nobody.
    Retire,
    /// The channel broke.
    Broken,
}

impl Shared {
    async fn publish_waves(&self, channel: &Channel, messages: &[Message]) -> (Outcomes<()>, Fate) {
        let groups = key_groups(messages);
        let mut outcomes: Vec<Option<Result<(), BoxError>>> =
            messages.iter().map(|_| None).collect();
        // (group, position of its next message)
        let mut active: Vec<(usize, usize)> = (0..groups.len()).map(|g| (g, 0)).collect();
        let mut fate = Fate::Reuse;
        let mut unreachable = false;
        while !active.is_empty() {
            let wave: Vec<usize> = active.iter().map(|&(g, p)| groups[g][p]).collect();
            let mut confirmations = Vec::with_capacity(wave.len());
            for chunk in wave.chunks(self.max_in_flight) {
                if unreachable {
                    break;
                }
                let answered = futures::future::join_all(
                    chunk.iter().map(|&i| self.confirm(channel, &messages[i])),
                )
                .await;
                let returned = returned_ids(&answered);
                for (&index, answer) in chunk.iter().zip(answered) {
                    let outcome = self.judge_in_wave(&messages[index], answer, &returned);
                    if let Err(error) = &outcome {
                        fate = fate.max(match error {
                            RabbitMqError::ConfirmTimeout { .. } => Fate::Retire,
                            RabbitMqError::Operation { .. } => Fate::Broken,
                            _ => Fate::Reuse,
                        });
                        unreachable |= error.is_unreachable();
                    }
                    confirmations.push((index, outcome));
                }
            }
            let mut next = Vec::with_capacity(active.len());
            for (&(group, position), &index) in active.iter().zip(&wave) {
                let Some(slot) = confirmations.iter().position(|(i, _)| *i == index) else {
                    // Not sent: a publish of this wave found the broker unreachable.
                    for &i in &groups[group][position..] {
                        outcomes[i] = Some(Err(NotAttempted::broker_unavailable().into()));
                    }
                    continue;
                };
                let (_, outcome) = confirmations.swap_remove(slot);
                let failed = outcome.is_err();
                outcomes[index] = Some(outcome.map_err(RabbitMqError::into_publish_error));
                if failed {
                    let key = messages[index].key.as_deref();
                    for &i in &groups[group][position + 1..] {
                        outcomes[i] = Some(Err(NotAttempted::after_failure(key).into()));
                    }
                } else if position + 1 < groups[group].len() {
                    next.push((group, position + 1));
                }
            }
            active = next;
        }
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every message has an outcome"))
            .collect();
        (outcomes, fate)
    }

    /// Publishes `message` on `channel` and waits for its confirmation, as it came.
    async fn confirm(
        &self,
        channel: &Channel,
        message: &Message,
    ) -> Result<Confirmation, RabbitMqError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = tokio::time::timeout(self.confirm_timeout, async {
            channel
                .basic_publish(
                    &message.topic,
                    envelope::routing_key(message),
                    options,
                    &message.payload,
                    envelope::properties(message),
                )
                .await?
                .await
        })
        .await;
        match confirmed {
            Ok(Ok(confirmation)) => Ok(confirmation),
            Ok(Err(source)) => Err(RabbitMqError::operation("publish")(source)),
            Err(_) => Err(RabbitMqError::ConfirmTimeout {
                message_id: message.id,
                after: self.confirm_timeout,
            }),
        }
    }

    /// A message's outcome from its confirmation and the returns of its wave (by message id).
    fn judge_in_wave(
        &self,
        message: &Message,
        answer: Result<Confirmation, RabbitMqError>,
        returned: &HashMap<String, (u16, String)>,
    ) -> Result<(), RabbitMqError> {
        let confirmation = answer?;
        if let Some((reply_code, reply_text)) = returned.get(&message.id.to_string()) {
            return Err(RabbitMqError::Unroutable {
                message_id: message.id,
                exchange: message.topic.clone(),
                routing_key: envelope::routing_key(message).to_owned(),
                reply_code: *reply_code,
                reply_text: reply_text.clone(),
            });
        }
        match confirmation {
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(RabbitMqError::Nacked {
                message_id: message.id,
            }),
        }
    }
}

/// The message ids of the returned messages the confirmations of a wave carry.
fn returned_ids(
    answered: &[Result<Confirmation, RabbitMqError>],
) -> HashMap<String, (u16, String)> {
    let mut ids = HashMap::new();
    for answer in answered {
        if let Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) = answer {
            match returned.properties.message_id() {
                Some(id) => {
                    ids.insert(
                        id.as_str().to_owned(),
                        (returned.reply_code, returned.reply_text.as_str().to_owned()),
                    );
                }
                None => tracing::warn!(
                    exchange = %returned.exchange,
                    "RabbitMQ returned a message without a message id; it cannot be matched to a publish"
                ),
            }
        }
    }
    ids
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
