//! Helpers shared by the broker integration tests: a broker on a temporary directory with a
//! manual clock and no background tasks, so every timer moves only when a test says so.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use broker_lite::broker::{
    Broker, BrokerConfig, ConsumerSpec, Delivery, ManualClock, PullRequest, SendRequest,
};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub broker: Broker,
}

pub fn config(clock: &ManualClock) -> BrokerConfig {
    let mut c = BrokerConfig::default();
    c.store.segment_size = 256 * 1024;
    c.store.max_record_size = 64 * 1024;
    c.store.checkpoint_interval = Duration::from_secs(3600);
    c.max_message_size = 32 * 1024;
    c.clock = Arc::new(clock.clone());
    c.background_tasks = false;
    c
}

pub async fn open_at(dir: &Path, config: BrokerConfig) -> Broker {
    Broker::open(dir, config).await.expect("broker opens")
}

impl Env {
    pub async fn new() -> Env {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut BrokerConfig)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_now();
        let mut c = config(&clock);
        tweak(&mut c);
        let broker = open_at(dir.path(), c).await;
        Env { dir, clock, broker }
    }

    /// Sends `body` and returns the message id.
    pub async fn send(&self, topic: &str, body: &str) -> uuid::Uuid {
        let r = self
            .broker
            .send(SendRequest::new(topic, body.to_string()))
            .await
            .unwrap();
        assert!(r.status.is_ok());
        r.message_id
    }

    pub async fn join(&self, group: &str, client: &str, topic: &str) {
        self.broker
            .subscribe(ConsumerSpec::new(group, client, topic))
            .await
            .unwrap();
    }

    pub async fn pull(&self, group: &str, client: &str, topic: &str, max: usize) -> Vec<Delivery> {
        self.broker
            .pull(PullRequest::new(group, client, topic).with_max_messages(max))
            .await
            .unwrap()
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

pub fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8(d.body.to_vec()).unwrap())
        .collect()
}
