//! The RabbitMQ delivery source: a consumer on a quorum queue with manual acks, a bounded
//! prefetch, delay queues for redelivery and a dead-letter queue.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::acker::Acker;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ConnectionProperties};
use uuid::Uuid;

use super::connection::Reconnecting;
use super::envelope::{
    self, RABBITMQ_DEAD_LETTER_REASON_HEADER, RABBITMQ_ORIGINAL_QUEUE_HEADER,
    RABBITMQ_REDELIVERIES_HEADER,
};
use super::publisher::Route;
use super::{RabbitMqError, RabbitMqPublisher, RabbitMqSourceConfig};
use crate::{Delivery, DeliverySource, NackOutcome, Pulled};

/// A [`DeliverySource`] consuming one RabbitMQ queue (the queue is the consumer group: its
/// consumers compete for its messages).
///
/// | source | RabbitMQ |
/// |---|---|
/// | `pull(max, wait)` | the next deliveries of a `basic.consume` with manual acks and `basic.qos(prefetch)` |
/// | `ack` | `basic.ack` |
/// | `nack(Some(0))` | `basic.nack(requeue)`: back to the queue at once (quorum queues count it in `x-delivery-count`) |
/// | `nack(delay)` | a confirmed copy into the delay queue of the first level ≥ `delay` (TTL, then dead-lettered back to the queue), then `basic.ack` |
/// | `nack(None)` | the same with the configured schedule: level `n` after the `n`-th failed delivery |
/// | `dead_letter(reason)` | a confirmed copy into `<queue>.dlq` with the reason, then `basic.ack` |
///
/// **Delay queues, not the delivery-count header**: RabbitMQ cannot delay a requeued message, so
/// quorum queues' `x-delivery-count` alone gives immediate redelivery only. One quorum queue per
/// delay level with a message TTL, dead-lettering at least once back into the work queue,
/// gives real delays (a per-queue TTL expires messages in order, where per-message TTLs would wait
/// behind a longer one at the head). The delivery count still counts requeues and lost
/// connections, and the work queue's `x-delivery-limit` (the maximum deliveries) dead-letters a
/// message that keeps crashing its consumers.
///
/// **Attempt** = 1 + the copies' `courier-redeliveries` header + the broker's `x-delivery-count`.
///
/// **Safety**: a copy is acknowledged by the broker (publisher confirm, `mandatory`) before the
/// original is acked, so a crash in between duplicates, never loses. When the copy cannot be
/// published the original is requeued at once (`nack`) or rejected into the work queue's
/// dead-letter exchange, which leads to the same dead-letter queue (`dead_letter`, without the
/// reason). A lost connection returns every unacked delivery to the queue (the broker
/// redelivers it); the next pull reconnects, and acks of deliveries from the old connection fail
/// (their message comes again; the idempotency layer absorbs it).
///
/// **Ordering**: with [`RabbitMqSourceConfig::ordered`] the queue is declared
/// single-active-consumer, so one consumer at a time receives it, in queue order; run the
/// [`Consumer`](crate::Consumer) with `ordered(true)` so that a failed message is retried in place.
/// A delayed redelivery goes to the back of the queue: without the ordered runtime, order holds
/// only until the first failure.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), tower::BoxError> {
/// use courier_middleware::{Consumer, Delivery, RabbitMqSource, RabbitMqSourceConfig};
/// use tokio_util::sync::CancellationToken;
///
/// let config = RabbitMqSourceConfig::new("billing").bind("orders", "#");
/// let source = RabbitMqSource::connect("amqp://guest:guest@127.0.0.1:5672/%2f", config).await?;
/// let handler = tower::service_fn(|delivery: Delivery| async move {
///     println!("{} (attempt {})", delivery.message.id, delivery.attempt);
///     Ok::<_, tower::BoxError>(())
/// });
/// Consumer::builder(source, handler).build().run(CancellationToken::new()).await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RabbitMqSource {
    config: RabbitMqSourceConfig,
    connection: Reconnecting,
    live: tokio::sync::Mutex<Option<Live>>,
    /// Publishes delay and dead-letter copies, on its own connection.
    copies: RabbitMqPublisher,
}

struct Live {
    channel: Channel,
    consumer: lapin::Consumer,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("channel", &self.channel.id())
            .finish_non_exhaustive()
    }
}

/// The receipt of a [`RabbitMqSource`] delivery: its acker, and what a delay or dead-letter copy
/// needs (properties and body).
pub struct RabbitMqReceipt {
    acker: Acker,
    channel: Channel,
    attempt: u32,
    id: Uuid,
    properties: BasicProperties,
    payload: bytes::Bytes,
}

impl std::fmt::Debug for RabbitMqReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqReceipt")
            .field("message_id", &self.id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl RabbitMqReceipt {
    /// The message id of the delivery.
    pub fn message_id(&self) -> Uuid {
        self.id
    }
}

impl RabbitMqSource {
    /// Connects to `uri`, declares the queue, its delay queues, its dead-letter queue and its
    /// bindings (unless [`declare(false)`](RabbitMqSourceConfig::declare)), and starts consuming.
    ///
    /// # Errors
    ///
    /// [`RabbitMqError::Connect`], [`RabbitMqError::TopologyConflict`] when the queues exist with
    /// other arguments, or the failed operation.
    pub async fn connect(
        uri: impl Into<String>,
        config: RabbitMqSourceConfig,
    ) -> Result<Self, RabbitMqError> {
        Self::connect_with_properties(uri, config, ConnectionProperties::default()).await
    }

    /// As [`connect`](Self::connect), with lapin's connection properties.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with_properties(
        uri: impl Into<String>,
        config: RabbitMqSourceConfig,
        properties: ConnectionProperties,
    ) -> Result<Self, RabbitMqError> {
        let uri = uri.into();
        let source = Self {
            connection: Reconnecting::new(uri.clone(), properties.clone()),
            copies: RabbitMqPublisher::with_properties(uri, properties),
            config,
            live: tokio::sync::Mutex::new(None),
        };
        let live = source.open().await?;
        *source.live.lock().await = Some(live);
        Ok(source)
    }

    /// The configuration.
    pub fn config(&self) -> &RabbitMqSourceConfig {
        &self.config
    }

    /// Stops consuming and closes the connections: unacked deliveries go back to the queue.
    pub async fn close(&self) {
        self.live.lock().await.take();
        self.connection.close().await;
        self.copies.close().await;
    }

    async fn open(&self) -> Result<Live, RabbitMqError> {
        let connection = self.connection.connection().await?;
        if self.config.declares() {
            self.config.topology().declare_on(&connection).await?;
        }
        let channel = connection
            .create_channel()
            .await
            .map_err(RabbitMqError::operation("opening a channel"))?;
        channel
            .basic_qos(self.config.prefetch_limit(), BasicQosOptions::default())
            .await
            .map_err(RabbitMqError::operation("setting the prefetch"))?;
        let consumer = channel
            .basic_consume(
                self.config.queue(),
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(RabbitMqError::operation("starting the consumer"))?;
        tracing::debug!(
            queue = self.config.queue(),
            prefetch = self.config.prefetch_limit(),
            "consuming from RabbitMQ"
        );
        Ok(Live { channel, consumer })
    }

    /// Drops the consumer and its connection: its unacked deliveries return to the queue, and
    /// their receipts cannot settle anything on a later connection.
    async fn reset(&self, live: &mut Option<Live>) {
        live.take();
        self.connection.close().await;
    }

    fn pulled(
        &self,
        channel: &Channel,
        delivery: lapin::message::Delivery,
    ) -> Pulled<RabbitMqReceipt> {
        let lapin::message::Delivery {
            properties,
            data,
            acker,
            redelivered,
            ..
        } = delivery;
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let copies = envelope::header_count(headers, RABBITMQ_REDELIVERIES_HEADER);
        let requeues = envelope::header_count(headers, "x-delivery-count");
        // A classic queue has no delivery count, only the redelivered flag.
        let requeues = if redelivered {
            requeues.max(1)
        } else {
            requeues
        };
        let attempt = 1_u32.saturating_add(copies).saturating_add(requeues);
        let payload = bytes::Bytes::from(data);
        let queue = self.config.queue();
        let message = envelope::message(&properties, payload.clone(), queue);
        let id = message.id;
        let delivery = Delivery::new(message, queue)
            .with_attempt(attempt)
            .with_queue(queue);
        Pulled::new(
            delivery,
            RabbitMqReceipt {
                acker,
                channel: channel.clone(),
                attempt,
                id,
                properties,
                payload,
            },
        )
    }

    /// Publishes a copy of the receipt's message to `queue` through the default exchange, with
    /// the broker's own headers (`x-delivery-count`, `x-death`) dropped and `extra` set.
    async fn copy_to(
        &self,
        receipt: &RabbitMqReceipt,
        queue: &str,
        extra: &[(&str, String)],
    ) -> Result<(), RabbitMqError> {
        let mut headers = FieldTable::default();
        if let Some(table) = receipt.properties.headers() {
            for (name, value) in table.inner() {
                if !name.as_str().starts_with("x-") {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
        for (name, value) in extra {
            headers.insert((*name).into(), AMQPValue::LongString(value.as_str().into()));
        }
        let properties = receipt
            .properties
            .clone()
            .with_delivery_mode(envelope::PERSISTENT)
            .with_headers(headers);
        let route = Route {
            exchange: "",
            routing_key: queue,
        };
        self.copies
            .publish_raw(route, &receipt.payload, properties, receipt.id)
            .await
    }

    /// `Ok` while the channel the delivery came on is open: settling on it is still meaningful.
    fn check_channel(receipt: &RabbitMqReceipt) -> Result<(), RabbitMqError> {
        if receipt.channel.status().connected() {
            Ok(())
        } else {
            Err(RabbitMqError::operation("settling a delivery")(
                lapin::Error::InvalidChannelState(receipt.channel.status().state()),
            ))
        }
    }

    async fn requeue(receipt: &RabbitMqReceipt) -> Result<(), RabbitMqError> {
        Self::check_channel(receipt)?;
        let options = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        receipt
            .acker
            .nack(options)
            .await
            .map_err(RabbitMqError::operation("requeueing a delivery"))
    }

    async fn ack_original(receipt: &RabbitMqReceipt, what: &str) -> Result<(), RabbitMqError> {
        let acked = match Self::check_channel(receipt) {
            Ok(()) => receipt
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(RabbitMqError::operation("acking a delivery")),
            Err(error) => Err(error),
        };
        if let Err(error) = &acked {
            tracing::warn!(message.id = %receipt.id, %error,
                "the {what} copy is stored but the original could not be acked; it will be delivered again as well");
        }
        acked
    }
}

impl DeliverySource for RabbitMqSource {
    type Receipt = RabbitMqReceipt;
    type Error = RabbitMqError;

    fn group(&self) -> Option<&str> {
        Some(self.config.queue())
    }

    /// Cancel safe: a delivery is taken from lapin's consumer only once it is returned.
    async fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Pulled<RabbitMqReceipt>>, RabbitMqError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut guard = self.live.lock().await;
        if guard
            .as_ref()
            .is_none_or(|live| !live.channel.status().connected())
        {
            self.reset(&mut guard).await;
            *guard = Some(self.open().await?);
        }
        let live = guard.as_mut().expect("opened above");
        let first = match tokio::time::timeout(wait, live.consumer.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(source))) => {
                self.reset(&mut guard).await;
                return Err(RabbitMqError::ConsumerStopped {
                    queue: self.config.queue().to_owned(),
                    reason: source.to_string(),
                });
            }
            Ok(None) => {
                self.reset(&mut guard).await;
                return Err(RabbitMqError::ConsumerStopped {
                    queue: self.config.queue().to_owned(),
                    reason: "the broker cancelled the consumer (was the queue deleted?)".into(),
                });
            }
        };
        let channel = live.channel.clone();
        let mut pulled = vec![self.pulled(&channel, first)];
        while pulled.len() < max {
            match live.consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => pulled.push(self.pulled(&channel, delivery)),
                // Nothing buffered (or the stream failed: the next pull sees the closed channel).
                _ => break,
            }
        }
        Ok(pulled)
    }

    async fn ack(&self, receipt: RabbitMqReceipt) -> Result<(), RabbitMqError> {
        Self::check_channel(&receipt)?;
        receipt
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(RabbitMqError::operation("acking a delivery"))
    }

    async fn nack(
        &self,
        receipt: RabbitMqReceipt,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, RabbitMqError> {
        // The delivery's channel is gone: the broker has already put the message back, so a
        // copy would only be a duplicate.
        Self::check_channel(&receipt)?;
        if receipt.attempt >= self.config.delivery_limit() {
            let reason = format!("failed {} deliveries (the maximum)", receipt.attempt);
            self.dead_letter(receipt, reason).await?;
            return Ok(NackOutcome::DeadLettered);
        }
        if delay == Some(Duration::ZERO) {
            Self::requeue(&receipt).await?;
            return Ok(NackOutcome::Redelivered);
        }
        let level = match delay {
            Some(delay) => self.config.level_at_least(delay),
            None => self.config.scheduled_level(receipt.attempt),
        };
        let queue = self.config.delay_queue(level);
        let copied = self
            .copy_to(
                &receipt,
                &queue,
                &[(RABBITMQ_REDELIVERIES_HEADER, receipt.attempt.to_string())],
            )
            .await;
        match copied {
            Ok(()) => {
                Self::ack_original(&receipt, "delay").await?;
            }
            Err(error) => {
                tracing::warn!(message.id = %receipt.id, %error, queue = %queue,
                    "publishing the delayed copy failed; requeueing the delivery without delay");
                Self::requeue(&receipt).await?;
            }
        }
        Ok(NackOutcome::Redelivered)
    }

    async fn dead_letter(
        &self,
        receipt: RabbitMqReceipt,
        reason: String,
    ) -> Result<(), RabbitMqError> {
        Self::check_channel(&receipt)?;
        let queue = self.config.dead_letter_queue();
        let copied = self
            .copy_to(
                &receipt,
                &queue,
                &[
                    (RABBITMQ_DEAD_LETTER_REASON_HEADER, reason),
                    (
                        RABBITMQ_ORIGINAL_QUEUE_HEADER,
                        self.config.queue().to_owned(),
                    ),
                    (
                        RABBITMQ_REDELIVERIES_HEADER,
                        receipt.attempt.saturating_sub(1).to_string(),
                    ),
                ],
            )
            .await;
        match copied {
            Ok(()) => Self::ack_original(&receipt, "dead-letter").await,
            Err(error) => {
                tracing::warn!(message.id = %receipt.id, %error,
                    "publishing the dead-letter copy failed; rejecting the delivery into the queue's dead-letter exchange (same queue, without the reason)");
                Self::check_channel(&receipt)?;
                receipt
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .map_err(RabbitMqError::operation("rejecting a delivery"))
            }
        }
    }

    fn redelivery_horizon(&self) -> Option<Duration> {
        Some(self.config.redelivery_horizon())
    }
}
