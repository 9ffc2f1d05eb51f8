//! Relay settings and their defaults.

use std::time::Duration;

use super::Backoff;

/// Tunables of a [`Relay`](crate::Relay). Set them through [`RelayBuilder`](crate::RelayBuilder).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub(crate) name: String,
    pub(crate) batch_size: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) publish_timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) poll_interval: Duration,
    pub(crate) busy_poll_interval: Duration,
    pub(crate) linger: Duration,
    pub(crate) rebalance_interval: Duration,
    pub(crate) maintenance_interval: Duration,
    pub(crate) retention: Option<Duration>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) lease: Duration,
    pub(crate) session_timeout: Duration,
    pub(crate) reconnect_backoff: Backoff,
    pub(crate) broker_probe: Backoff,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "courier-relay".to_owned(),
            batch_size: 500,
            max_in_flight: 64,
            publish_timeout: Duration::from_secs(10),
            max_attempts: 16,
            backoff: Backoff::default(),
            poll_interval: Duration::from_secs(5),
            busy_poll_interval: Duration::from_millis(5),
            linger: Duration::from_millis(250),
            rebalance_interval: Duration::from_secs(5),
            maintenance_interval: Duration::from_secs(15),
            retention: None,
            shutdown_grace: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            session_timeout: Duration::from_secs(30),
            reconnect_backoff: Backoff {
                base: Duration::from_millis(200),
                factor: 2.0,
                max: Duration::from_secs(10),
                jitter: 0.2,
            },
            broker_probe: super::circuit::DEFAULT_PROBE,
        }
    }
}

impl RelayConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return Err(format!(
                "batch_size must be 1..=100000, got {}",
                self.batch_size
            ));
        }
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".to_owned());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".to_owned());
        }
        for (name, value) in [
            ("publish_timeout", self.publish_timeout),
            ("poll_interval", self.poll_interval),
            ("busy_poll_interval", self.busy_poll_interval),
            ("rebalance_interval", self.rebalance_interval),
            ("maintenance_interval", self.maintenance_interval),
            ("lease", self.lease),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.session_timeout < Duration::from_millis(100) {
            return Err(format!(
                "session_timeout must be at least 100 ms, got {:?}: the relay pings its \
                 connection every third of it while it publishes",
                self.session_timeout
            ));
        }
        if self.name.is_empty() {
            return Err("the relay name must not be empty".to_owned());
        }
        self.backoff.validate()?;
        if self.broker_probe.base.is_zero() {
            // A zero pause would send probes back to back against a broker that is down.
            return Err("broker_probe base must be greater than zero".to_owned());
        }
        self.broker_probe
            .validate()
            .map_err(|error| format!("broker_probe: {error}"))
    }
}
