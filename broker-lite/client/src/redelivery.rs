//! The broker's redelivery schedule, which the protocol does not carry but consumers that pick
//! delay levels (or estimate how long a message may keep coming back) need to know.

use std::time::Duration;

/// RocketMQ's delay levels (`messageDelayLevel`): level 1 is 1 s, level 18 is 2 h.
pub const ROCKETMQ_DELAY_LEVELS: [Duration; 18] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(3 * 60),
    Duration::from_secs(4 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(6 * 60),
    Duration::from_secs(7 * 60),
    Duration::from_secs(8 * 60),
    Duration::from_secs(9 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
];

/// How a broker redelivers nacked messages: its delay levels, the level of the first redelivery
/// and how many redeliveries come before the dead-letter topic (safeguards C1, C8).
///
/// The default is broker-lite's default (and RocketMQ's): the 18 [`ROCKETMQ_DELAY_LEVELS`], first
/// retry at level 3 (10 s), 16 redeliveries. An embedded broker's `&BrokerConfig` converts into
/// this type (`broker_lite::broker::BrokerConfig`).
///
/// ```
/// use std::time::Duration;
/// use broker_lite_client::Redelivery;
///
/// let schedule = Redelivery::default();
/// assert_eq!(schedule.delay_levels[usize::from(schedule.first_retry_level) - 1], Duration::from_secs(10));
/// assert_eq!(schedule.max_reconsume_times, 16);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redelivery {
    /// Redelivery delays by level (level 1 is the first entry).
    pub delay_levels: Vec<Duration>,
    /// The level of the first redelivery; the n-th redelivery uses `first_retry_level + n - 1`
    /// (capped at the last level).
    pub first_retry_level: u8,
    /// After this many redeliveries a nacked message goes to the group's dead-letter topic.
    pub max_reconsume_times: u32,
}

impl Redelivery {
    /// A schedule with these levels, first retry level and reconsume limit.
    pub fn new(
        delay_levels: Vec<Duration>,
        first_retry_level: u8,
        max_reconsume_times: u32,
    ) -> Self {
        Redelivery {
            delay_levels,
            first_retry_level,
            max_reconsume_times,
        }
    }
}

impl Default for Redelivery {
    fn default() -> Self {
        Redelivery::new(ROCKETMQ_DELAY_LEVELS.to_vec(), 3, 16)
    }
}
