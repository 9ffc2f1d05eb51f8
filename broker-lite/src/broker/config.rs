//! Broker configuration.

use std::sync::Arc;
use std::time::Duration;

use super::clock::{Clock, SystemClock};
use broker_lite_client::Redelivery;

use crate::storage::StoreConfig;

pub use broker_lite_client::ROCKETMQ_DELAY_LEVELS;

/// How a message is replicated before the producer is answered (safeguards B3, B4): the wire
/// type, one definition for the broker's configuration and what `Describe` reports.
pub use broker_lite_client::protocol::Replication;

/// Where a consumer group starts reading a queue it has never consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConsumeFrom {
    /// The oldest message still stored (nothing sent before the group existed is missed).
    #[default]
    Earliest,
    /// Only messages sent after the group first read the queue.
    Latest,
}

/// Configuration of a [`Broker`](super::Broker).
///
/// ```
/// use std::time::Duration;
/// use broker_lite::broker::BrokerConfig;
///
/// let mut config = BrokerConfig::default();
/// config.max_reconsume_times = 3;
/// config.consume_timeout = Duration::from_secs(60);
/// assert_eq!(config.delay_for(config.first_retry_level), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerConfig {
    /// The storage configuration (flush mode, segment size, retention ...).
    pub store: StoreConfig,
    /// Queues of a topic created on first send. Default 4.
    pub default_queues: u32,
    /// Whether sending to (or subscribing to) an unknown topic creates it. Default `true`.
    pub auto_create_topics: bool,
    /// After this many redeliveries a nacked message goes to the group's dead-letter topic
    /// `%DLQ%<group>` (safeguard C8, `maxReconsumeTimes`). Default 16.
    pub max_reconsume_times: u32,
    /// Redelivery delays by level (level 1 is the first entry). Default
    /// [`ROCKETMQ_DELAY_LEVELS`].
    pub delay_levels: Vec<Duration>,
    /// The level of the first redelivery; the n-th redelivery uses `first_retry_level + n - 1`
    /// (capped at the last level). Default 3 (10 s), as RocketMQ.
    pub first_retry_level: u8,
    /// A delivered message that is neither acked nor nacked within this time is redelivered
    /// (safeguard C3, `consumeTimeout`). Default 15 min.
    pub consume_timeout: Duration,
    /// A member that has not sent a heartbeat (or pulled) for this long is evicted and its queues
    /// rebalanced. Default 30 s.
    pub heartbeat_timeout: Duration,
    /// Largest message body accepted. Default 4 MiB minus 64 KiB for the headers.
    pub max_message_size: usize,
    /// Upper bound of a pull's long-poll wait. Default 30 s.
    pub max_long_poll: Duration,
    /// Upper bound of messages returned by one pull. Default 1024.
    pub max_pull_batch: usize,
    /// Upper bound of the span between a consumed queue's committed offset (its oldest unsettled
    /// message) and the next message to deliver (RocketMQ's `consumeConcurrentlyMaxSpan`): a
    /// queue whose oldest message is stuck that far behind delivers nothing new until it is
    /// settled. It bounds the memory and checkpoint size per queue. Default 10 000.
    pub max_pending_per_queue: usize,
    /// Where a group starts on a queue it never consumed. Default [`ConsumeFrom::Earliest`].
    pub consume_from: ConsumeFrom,
    /// How often consumer offsets are saved (they are also saved on close). Default 1 s.
    pub offsets_save_interval: Duration,
    /// How often the background task evicts silent members and redelivers timed-out messages.
    /// Default 1 s.
    pub housekeeping_interval: Duration,
    /// How often retention runs (safeguard B5). Default 60 s.
    pub retention_interval: Duration,
    /// Warn when a group's oldest unconsumed message is within this margin of its retention
    /// expiry. Default 6 h.
    pub retention_warning_margin: Duration,
    /// How many message ids the in-memory trace keeps (oldest forgotten first). Default 100 000.
    pub trace_capacity: usize,
    /// Replication before answering producers. Default [`Replication::None`].
    pub replication: Replication,
    /// The time source of every broker timer. Default [`SystemClock`].
    pub clock: Arc<dyn Clock>,
    /// Whether `open` starts the background tasks (offset saving, housekeeping, retention).
    /// Default `true`; tests may switch them off and call the methods themselves.
    pub background_tasks: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        // The redelivery defaults are the client crate's, which consumers assume when they are
        // not told the broker's configuration: one definition for both sides.
        let redelivery = Redelivery::default();
        BrokerConfig {
            store: StoreConfig::default(),
            default_queues: 4,
            auto_create_topics: true,
            max_reconsume_times: redelivery.max_reconsume_times,
            delay_levels: redelivery.delay_levels,
            first_retry_level: redelivery.first_retry_level,
            consume_timeout: Duration::from_secs(15 * 60),
            heartbeat_timeout: Duration::from_secs(30),
            max_message_size: (4 << 20) - (64 << 10),
            max_long_poll: Duration::from_secs(30),
            max_pull_batch: 1024,
            max_pending_per_queue: 10_000,
            consume_from: ConsumeFrom::Earliest,
            offsets_save_interval: Duration::from_secs(1),
            housekeeping_interval: Duration::from_secs(1),
            retention_interval: Duration::from_secs(60),
            retention_warning_margin: Duration::from_secs(6 * 3600),
            trace_capacity: 100_000,
            replication: Replication::None,
            clock: Arc::new(SystemClock),
            background_tasks: true,
        }
    }
}

impl BrokerConfig {
    /// The delay of `level` (1-based), clamped to the configured levels.
    pub fn delay_for(&self, level: u8) -> Duration {
        let i = usize::from(level.max(1)) - 1;
        self.delay_levels
            .get(i.min(self.delay_levels.len().saturating_sub(1)))
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// The level used for the redelivery after `reconsume_times` earlier redeliveries.
    pub fn level_for_retry(&self, reconsume_times: u32) -> u8 {
        let level = u32::from(self.first_retry_level) + reconsume_times;
        level.min(self.delay_levels.len().max(1) as u32).min(255) as u8
    }

    /// Checks that the values can work together.
    ///
    /// # Errors
    /// [`BrokerError::InvalidConfig`](super::BrokerError::InvalidConfig) naming the field.
    pub fn validate(&self) -> Result<(), super::BrokerError> {
        let bad = |m: &str| Err(super::BrokerError::InvalidConfig(m.to_string()));
        if self.default_queues == 0 {
            return bad("default_queues must be at least 1");
        }
        if self.delay_levels.is_empty() {
            return bad("delay_levels must not be empty");
        }
        if self.max_message_size >= self.store.max_record_size as usize {
            return bad(
                "max_message_size must be smaller than store.max_record_size (headers need room)",
            );
        }
        if self.max_pull_batch == 0 || self.max_pending_per_queue == 0 {
            return bad("max_pull_batch and max_pending_per_queue must be at least 1");
        }
        if self.offsets_save_interval.is_zero()
            || self.housekeeping_interval.is_zero()
            || self.retention_interval.is_zero()
        {
            return bad("the background task intervals must be greater than zero");
        }
        self.store
            .validate()
            .map_err(|e| super::BrokerError::InvalidConfig(e.to_string()))
    }
}

/// The redelivery schedule of a broker with this configuration, for consumers that pick delay
/// levels (the middleware's `BrokerLiteSource::with_broker_config`).
impl From<&BrokerConfig> for Redelivery {
    fn from(config: &BrokerConfig) -> Self {
        Redelivery::new(
            config.delay_levels.clone(),
            config.first_retry_level,
            config.max_reconsume_times,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(BrokerConfig::default().validate().is_ok());
        let mut c = BrokerConfig::default();
        c.max_message_size = c.store.max_record_size as usize;
        assert!(c.validate().is_err());
        let mut c = BrokerConfig::default();
        c.delay_levels.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn retry_levels_follow_rocketmq() {
        let c = BrokerConfig::default();
        assert_eq!(c.level_for_retry(0), 3);
        assert_eq!(c.delay_for(c.level_for_retry(0)), Duration::from_secs(10));
        assert_eq!(c.delay_for(c.level_for_retry(1)), Duration::from_secs(30));
        assert_eq!(c.level_for_retry(100), 18);
        assert_eq!(c.delay_for(200), Duration::from_secs(7200));
        assert_eq!(c.delay_for(0), Duration::from_secs(1));
    }
}
