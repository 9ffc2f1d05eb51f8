//! The broker-lite delivery source: a consumer group member the runtime pulls from.

use std::time::Duration;

use broker_lite_client::protocol::{self, NackResult};
use broker_lite_client::{Addresses, ClientError, Consumer, ConsumerConfig, Redelivery};

use crate::{ConsumeModel, Delivery, DeliverySource, NackOutcome, Pulled};

/// A [`DeliverySource`] over a broker-lite [`Consumer`]: one member of a consumer group.
///
/// | source | broker-lite |
/// |---|---|
/// | `pull(max, wait)` | `Consumer::pull` with a long poll of `wait` (at most 1024 per pull) |
/// | `ack` | `Consumer::ack` |
/// | `nack(None)` | `Consumer::nack` without a level: the broker's schedule (10 s, 30 s, 1 min ...) |
/// | `nack(Some(delay))` | `Consumer::nack` with the first delay level ≥ `delay` (the last level if none is) |
/// | `dead_letter(reason)` | `Consumer::dead_letter`: to `%DLQ%<group>` at once, `reason` kept with it |
/// | `model()` | the subscription's clustering or broadcasting model |
/// | `redelivery_horizon()` | the delays of the broker's schedule summed over its `max_reconsume_times` |
///
/// Each [`Delivery`] carries the envelope (properties back as headers), the attempt (the
/// broker's reconsume count + 1), the group, the queue (`"<topic>:<queue id>"`, the ordering key
/// of unkeyed messages) and the time of the first delivery to the group.
///
/// The delay levels and the reconsume limit are the broker's settings, which the protocol does
/// not carry: the source assumes broker-lite's defaults (RocketMQ's 18 levels, first retry at
/// level 3, 16 redeliveries) unless told otherwise with
/// [`with_broker_config`](Self::with_broker_config).
///
/// Dropping the source leaves the group (in the background), so its queues move to the other
/// members at once.
///
/// A pull dropped by the runtime's shutdown may leave deliveries the broker handed out but nobody
/// received; the broker redelivers them after its consume timeout (15 min by default).
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), tower::BoxError> {
/// use broker_lite_client::ConsumerConfig;
/// use courier_middleware::{BrokerLiteSource, CatchPanicLayer, Consumer, Delivery, Reject};
/// use tokio_util::sync::CancellationToken;
/// use tower::ServiceBuilder;
///
/// let source =
///     BrokerLiteSource::connect("127.0.0.1:9876", ConsumerConfig::new("billing", "orders")).await?;
/// let handler = ServiceBuilder::new()
///     .layer(CatchPanicLayer::new())
///     .service_fn(|delivery: Delivery| async move {
///         let order: serde_json::Value = delivery.message.payload_json().map_err(Reject::new)?;
///         println!("order {}", order["id"]);
///         Ok::<_, tower::BoxError>(())
///     });
/// Consumer::builder(source, handler)
///     .group("billing")
///     .build()
///     .run(CancellationToken::new())
///     .await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BrokerLiteSource {
    /// `None` only once dropped or unwrapped.
    consumer: Option<Consumer>,
    schedule: Redelivery,
}

impl Drop for BrokerLiteSource {
    /// Leaves the group in the background (when a tokio runtime is still running), so that the
    /// member's queues move to the others at once instead of after the heartbeat timeout.
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = consumer.close().await {
                    tracing::debug!(%error, "leaving the broker-lite group failed; the broker evicts the member after its heartbeat timeout");
                }
            });
        }
    }
}

/// The receipt of a [`BrokerLiteSource`] delivery: the broker's receipt with the coordinates of
/// the message (not its body).
#[derive(Debug, Clone)]
pub struct BrokerLiteReceipt {
    delivery: protocol::Delivery,
}

impl BrokerLiteReceipt {
    fn new(delivery: &protocol::Delivery) -> Self {
        let mut slim = delivery.clone();
        slim.message.body = Default::default();
        slim.message.properties.clear();
        Self { delivery: slim }
    }

    /// The topic, queue and offset of the delivered message.
    pub fn position(&self) -> (&str, u32, u64) {
        let m = &self.delivery.message;
        (&m.topic, m.queue_id, m.queue_offset)
    }
}

impl BrokerLiteSource {
    /// A source over a connected, subscribed `consumer`, assuming the broker's default
    /// redelivery settings.
    pub fn new(consumer: Consumer) -> Self {
        Self {
            consumer: Some(consumer),
            schedule: Redelivery::default(),
        }
    }

    /// Connects to the first reachable address of `addresses` and subscribes as `config` says.
    ///
    /// # Errors
    ///
    /// A connection error, or the broker's refusal of the subscription.
    pub async fn connect(
        addresses: impl Into<Addresses>,
        config: ConsumerConfig,
    ) -> Result<Self, ClientError> {
        Consumer::connect(addresses, config).await.map(Self::new)
    }

    /// Takes the delay levels, the first retry level and the reconsume limit from the broker's
    /// configuration (an embedded broker's `&broker_lite::broker::BrokerConfig` converts, or
    /// build a [`Redelivery`] with the settings a standalone broker was started with).
    #[must_use]
    pub fn with_broker_config(mut self, config: impl Into<Redelivery>) -> Self {
        self.schedule = config.into();
        self
    }

    /// The consumer.
    pub fn get_ref(&self) -> &Consumer {
        self.consumer()
    }

    /// Unwraps the consumer; it stays in the group until [`close`](Consumer::close)d (or evicted
    /// after the heartbeat timeout once dropped). Dropping the source instead leaves the group.
    pub fn into_inner(mut self) -> Consumer {
        self.consumer
            .take()
            .expect("the consumer is present until drop")
    }

    fn consumer(&self) -> &Consumer {
        self.consumer
            .as_ref()
            .expect("the consumer is present until drop")
    }

    /// The delay level (1-based) a nack asking for `delay` uses: the first level at least as long,
    /// or the last level when none is.
    ///
    /// ```no_run
    /// # fn demo(source: courier_middleware::BrokerLiteSource) {
    /// use std::time::Duration;
    /// // RocketMQ's levels: 1 s, 5 s, 10 s, 30 s, 1 min ...
    /// assert_eq!(source.delay_level_for(Duration::from_secs(7)), 3);
    /// # }
    /// ```
    pub fn delay_level_for(&self, delay: Duration) -> u32 {
        level_at_least(&self.schedule.delay_levels, delay)
    }
}

fn level_at_least(levels: &[Duration], delay: Duration) -> u32 {
    let index = levels
        .iter()
        .position(|level| *level >= delay)
        .unwrap_or(levels.len().saturating_sub(1));
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// The broker's own schedule (`first_retry_level`, one level up per redelivery, capped at the
/// last level) summed over `max_reconsume_times` redeliveries.
fn horizon(schedule: &Redelivery) -> Duration {
    let levels = &schedule.delay_levels;
    (0..schedule.max_reconsume_times)
        .map(|n| {
            let level = (usize::from(schedule.first_retry_level) + n as usize)
                .clamp(1, levels.len().max(1));
            levels.get(level - 1).copied().unwrap_or_default()
        })
        .sum()
}

fn to_delivery(group: &str, d: &protocol::Delivery) -> Delivery {
    let queue = format!("{}:{}", d.message.topic, d.message.queue_id);
    let mut delivery = Delivery::new(super::from_broker(d.message.clone()), group)
        .with_attempt(d.reconsume_times.saturating_add(1))
        .with_queue(queue);
    if let Some(first) = super::from_ms(d.first_delivered_at_ms) {
        delivery = delivery.with_first_delivered_at(first);
    }
    delivery
}

impl DeliverySource for BrokerLiteSource {
    type Receipt = BrokerLiteReceipt;
    type Error = ClientError;

    fn group(&self) -> Option<&str> {
        Some(&self.consumer().config().group)
    }

    async fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Pulled<BrokerLiteReceipt>>, ClientError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = u32::try_from(max.min(1024)).unwrap_or(1024);
        let group = &self.consumer().config().group;
        Ok(self
            .consumer()
            .pull(max, wait)
            .await?
            .into_iter()
            .map(|d| Pulled::new(to_delivery(group, &d), BrokerLiteReceipt::new(&d)))
            .collect())
    }

    async fn ack(&self, receipt: BrokerLiteReceipt) -> Result<(), ClientError> {
        self.consumer().ack(&receipt.delivery).await
    }

    async fn nack(
        &self,
        receipt: BrokerLiteReceipt,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, ClientError> {
        let level = delay.map(|delay| self.delay_level_for(delay));
        Ok(
            match self.consumer().nack(&receipt.delivery, level).await? {
                NackResult::DeadLettered => NackOutcome::DeadLettered,
                NackResult::Redeliver { .. } => NackOutcome::Redelivered,
            },
        )
    }

    async fn dead_letter(
        &self,
        receipt: BrokerLiteReceipt,
        reason: String,
    ) -> Result<(), ClientError> {
        let reason = (!reason.is_empty()).then_some(reason.as_str());
        self.consumer().dead_letter(&receipt.delivery, reason).await
    }

    fn model(&self) -> ConsumeModel {
        match self.consumer().config().model {
            protocol::ConsumeModel::Broadcasting => ConsumeModel::Broadcasting,
            protocol::ConsumeModel::Clustering => ConsumeModel::Clustering,
        }
    }

    fn redelivery_horizon(&self) -> Option<Duration> {
        Some(horizon(&self.schedule))
    }
}

#[cfg(test)]
mod tests {
    use broker_lite_client::ROCKETMQ_DELAY_LEVELS;

    use super::*;

    #[test]
    fn a_delay_maps_to_the_first_level_at_least_as_long() {
        let levels = ROCKETMQ_DELAY_LEVELS;
        assert_eq!(level_at_least(&levels, Duration::ZERO), 1);
        assert_eq!(level_at_least(&levels, Duration::from_secs(1)), 1);
        assert_eq!(level_at_least(&levels, Duration::from_millis(1001)), 2);
        assert_eq!(level_at_least(&levels, Duration::from_secs(7)), 3);
        assert_eq!(level_at_least(&levels, Duration::from_secs(60)), 5);
        assert_eq!(level_at_least(&levels, Duration::from_secs(2 * 3600)), 18);
        assert_eq!(level_at_least(&levels, Duration::from_secs(24 * 3600)), 18);
    }

    #[test]
    fn the_horizon_follows_the_brokers_schedule() {
        // Levels 3..=18 for 16 redeliveries: 10 s + 30 s + 1 min + 2 min + ... + 1 h + 2 h.
        let default = horizon(&Redelivery::default());
        assert_eq!(default, ROCKETMQ_DELAY_LEVELS[2..].iter().sum::<Duration>());
        let short = Redelivery::new(vec![Duration::from_secs(1), Duration::from_secs(5)], 1, 3);
        assert_eq!(horizon(&short), Duration::from_secs(1 + 5 + 5));
    }
}
