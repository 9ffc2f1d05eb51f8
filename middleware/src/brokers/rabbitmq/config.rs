//! What a [`RabbitMqSource`](super::RabbitMqSource) consumes and how it redelivers.

use std::time::Duration;

use super::{QueueSpec, QueueType, RabbitMqTopology};

/// The redelivery delays unless configured: 1 s, 5 s, 10 s, 30 s, 1 min, 2 min, 5 min, 10 min,
/// 30 min, 1 h (one delay queue each).
pub const DEFAULT_DELAY_LEVELS: [Duration; 10] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(300),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
];

/// Deliveries held unacked by one consumer unless configured: 64 (`basic.qos`).
pub const DEFAULT_PREFETCH: u16 = 64;

/// The queue a [`RabbitMqSource`](super::RabbitMqSource) consumes, its bindings and its
/// redelivery settings. The queue names the consumer group.
///
/// Declared (by default, at every connection): the work queue `<queue>` (quorum, dead-lettering
/// at least once into the dead-letter queue, `x-delivery-limit` = the maximum deliveries), the
/// dead-letter queue `<queue>.dlq` (quorum), one delay queue `<queue>.delay.<ms>ms` per delay
/// level (quorum, TTL = the level, dead-lettering at least once back into `<queue>`), the durable
/// topic exchanges of the bindings and the bindings.
///
/// ```
/// use std::time::Duration;
/// use courier_middleware::RabbitMqSourceConfig;
///
/// let config = RabbitMqSourceConfig::new("billing")
///     .bind("orders", "#")
///     .prefetch(32)
///     .delay_levels([Duration::from_secs(1), Duration::from_secs(30)]);
/// assert_eq!(config.dead_letter_queue(), "billing.dlq");
/// assert_eq!(config.delay_queue(1), "billing.delay.30000ms");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct RabbitMqSourceConfig {
    queue: String,
    bindings: Vec<(String, String)>,
    prefetch: u16,
    delay_levels: Vec<Duration>,
    max_deliveries: u32,
    ordered: bool,
    queue_type: QueueType,
    declare: bool,
}

impl RabbitMqSourceConfig {
    /// Consume `queue`, with the defaults: prefetch [`DEFAULT_PREFETCH`], delays
    /// [`DEFAULT_DELAY_LEVELS`], at most [`DEFAULT_MAX_DELIVERIES`](crate::DEFAULT_MAX_DELIVERIES)
    /// deliveries, quorum queues, declared on connect, unordered.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            bindings: Vec::new(),
            prefetch: DEFAULT_PREFETCH,
            delay_levels: DEFAULT_DELAY_LEVELS.to_vec(),
            max_deliveries: crate::DEFAULT_MAX_DELIVERIES,
            ordered: false,
            queue_type: QueueType::Quorum,
            declare: true,
        }
    }

    /// Binds the queue to the topic exchange `exchange` (the publisher's exchange of topic
    /// `exchange`) with `pattern`: `#` for every message, else a pattern on the tag.
    pub fn bind(mut self, exchange: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.bindings.push((exchange.into(), pattern.into()));
        self
    }

    /// At most `n` deliveries unacked at once on this consumer (at least 1). Keep it at least the
    /// runtime's concurrency, or the runtime waits for deliveries it has room for.
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// The delays a redelivery can wait (at least one). `nack(delay)` uses the first level at
    /// least as long (the last if none is), `nack(None)` level `n` after the `n`-th failure.
    /// Changing the levels declares new delay queues; the old ones can be deleted once empty.
    pub fn delay_levels(mut self, levels: impl IntoIterator<Item = Duration>) -> Self {
        let mut levels: Vec<Duration> = levels
            .into_iter()
            .map(|d| d.max(Duration::from_millis(1)))
            .collect();
        levels.sort();
        levels.dedup();
        if levels.is_empty() {
            levels.push(DEFAULT_DELAY_LEVELS[0]);
        }
        self.delay_levels = levels;
        self
    }

    /// A failed delivery number `n` goes to the dead-letter queue (at least 1); also the work
    /// queue's `x-delivery-limit`. Match the runtime's `max_deliveries`.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// Declares the work queue single-active-consumer: one consumer at a time receives its
    /// messages, in queue order (for the runtime's ordered mode). An existing queue cannot change
    /// this; declaring it on a queue without it fails with a topology conflict.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// The type of the declared queues; quorum unless opted out.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Whether the source declares its topology when it connects (default true). Without it the
    /// queues must exist, declared by [`topology`](Self::topology) elsewhere.
    pub fn declare(mut self, declare: bool) -> Self {
        self.declare = declare;
        self
    }

    /// The work queue (and consumer group).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The prefetch.
    pub fn prefetch_limit(&self) -> u16 {
        self.prefetch
    }

    pub(crate) fn declares(&self) -> bool {
        self.declare
    }

    /// The maximum deliveries.
    pub fn delivery_limit(&self) -> u32 {
        self.max_deliveries
    }

    /// The delay levels, shortest first.
    pub fn delays(&self) -> &[Duration] {
        &self.delay_levels
    }

    /// The dead-letter queue: `<queue>.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// The delay queue of level `index` (0-based, capped at the last): `<queue>.delay.<ms>ms`.
    pub fn delay_queue(&self, index: usize) -> String {
        let level = self.delay_levels[index.min(self.delay_levels.len() - 1)];
        format!("{}.delay.{}ms", self.queue, level.as_millis())
    }

    /// The index of the first level at least `delay` long, else the last.
    pub(crate) fn level_at_least(&self, delay: Duration) -> usize {
        self.delay_levels
            .iter()
            .position(|level| *level >= delay)
            .unwrap_or(self.delay_levels.len() - 1)
    }

    /// The level after failed delivery number `attempt` (1-based): level `attempt - 1`, capped.
    pub(crate) fn scheduled_level(&self, attempt: u32) -> usize {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        index.min(self.delay_levels.len() - 1)
    }

    /// How long after the first delivery a redelivery can still come: the scheduled delays of
    /// `max_deliveries - 1` redeliveries.
    pub fn redelivery_horizon(&self) -> Duration {
        (1..self.max_deliveries)
            .map(|attempt| self.delay_levels[self.scheduled_level(attempt)])
            .sum()
    }

    /// Everything the source needs on the broker.
    pub fn topology(&self) -> RabbitMqTopology {
        let dlq = self.dead_letter_queue();
        let mut work = QueueSpec::new(&self.queue)
            .queue_type(self.queue_type)
            .dead_letter_into(&dlq);
        if self.queue_type == QueueType::Quorum {
            work = work.delivery_limit(self.max_deliveries);
        }
        if self.ordered {
            work = work.single_active_consumer();
        }
        let mut topology = RabbitMqTopology::new()
            .queue(QueueSpec::new(&dlq).queue_type(self.queue_type))
            .queue(work);
        for index in 0..self.delay_levels.len() {
            topology = topology.queue(
                QueueSpec::new(self.delay_queue(index))
                    .queue_type(self.queue_type)
                    .delay_into(&self.queue, self.delay_levels[index]),
            );
        }
        for (exchange, pattern) in &self.bindings {
            topology = topology
                .exchange(exchange)
                .bind(&self.queue, exchange, pattern);
        }
        topology
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_horizon() {
        let config = RabbitMqSourceConfig::new("q")
            .delay_levels([Duration::from_secs(5), Duration::from_secs(1)])
            .max_deliveries(4);
        assert_eq!(config.level_at_least(Duration::ZERO), 0);
        assert_eq!(config.level_at_least(Duration::from_secs(2)), 1);
        assert_eq!(config.level_at_least(Duration::from_secs(60)), 1);
        assert_eq!(config.scheduled_level(1), 0);
        assert_eq!(config.scheduled_level(9), 1);
        // Redeliveries after failures 1, 2, 3: 1 s + 5 s + 5 s.
        assert_eq!(config.redelivery_horizon(), Duration::from_secs(11));
        let names: Vec<_> = config
            .topology()
            .queues()
            .iter()
            .map(|q| q.name().to_owned())
            .collect();
        assert_eq!(names, ["q.dlq", "q", "q.delay.1000ms", "q.delay.5000ms"]);
    }
}
