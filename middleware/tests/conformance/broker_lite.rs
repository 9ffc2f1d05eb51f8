//! broker-lite, embedded in the test process (SYNC_FLUSH, its own directory), with short delay
//! levels so redeliveries come in milliseconds. "Killing" it is an abrupt shutdown of the
//! embedded server: the same data directory and port serve the restart.

use std::time::Duration;

use broker_lite::broker::TraceKind;
use broker_lite::client::{ConsumerConfig, ProducerConfig};
use broker_lite::embedded::{self, EmbeddedBroker, EmbeddedConfig};
use broker_lite::storage::FlushMode;
use courier_middleware::{BrokerLitePublisher, BrokerLiteSource};
use uuid::Uuid;

use crate::harness::{Adapter, Promises, Topic};

pub(crate) struct BrokerLite {
    dir: tempfile::TempDir,
    config: EmbeddedConfig,
    broker: Option<EmbeddedBroker>,
}

impl BrokerLite {
    fn broker(&self) -> &EmbeddedBroker {
        self.broker.as_ref().expect("the broker is running")
    }
}

impl Adapter for BrokerLite {
    type Publisher = BrokerLitePublisher;
    type Source = BrokerLiteSource;

    // broker-lite answers a send whose message id it already holds (within its window of recent
    // sends) from the stored copy; the consumer's idempotency layer absorbs the rest.
    const PROMISES: Promises = Promises {
        deduplicates_publishes: true,
    };

    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::default();
        config.broker.store.flush_mode = FlushMode::Sync;
        config.broker.store.segment_size = 1 << 20;
        config.broker.store.max_record_size = 64 * 1024;
        config.broker.max_message_size = 32 * 1024;
        config.broker.delay_levels = [100, 200, 300, 500, 1000]
            .map(Duration::from_millis)
            .to_vec();
        config.broker.first_retry_level = 1;
        config.broker.housekeeping_interval = Duration::from_millis(100);
        // A delivery whose settlement was lost (the broker died meanwhile) comes back after this.
        config.broker.consume_timeout = Duration::from_secs(3);
        let broker = embedded::start(dir.path(), config.clone()).await.unwrap();
        config.listen = broker.addr();
        Self {
            dir,
            config,
            broker: Some(broker),
        }
    }

    async fn topic(&self, case: &str) -> Topic {
        // Topics are created on first use.
        Topic::unique(case)
    }

    async fn publisher(&self) -> BrokerLitePublisher {
        BrokerLitePublisher::connect(self.config.listen, ProducerConfig::default())
            .await
            .unwrap()
    }

    async fn source(&self, topic: &Topic) -> BrokerLiteSource {
        BrokerLiteSource::connect(
            self.config.listen,
            ConsumerConfig::new(topic.group.clone(), topic.topic.clone()),
        )
        .await
        .unwrap()
        .with_broker_config(&self.config.broker)
    }

    async fn dead_letters(&self, topic: &Topic) -> Vec<Uuid> {
        let letters = self.broker().broker().dead_letters(&topic.group, 100).await;
        letters.unwrap().into_iter().map(|m| m.message_id).collect()
    }

    async fn stored_copies(&self, topic: &Topic, id: Uuid) -> usize {
        let trace = self.broker().broker().trace(id);
        trace
            .iter()
            .filter(|e| matches!(&e.kind, TraceKind::Stored { topic: t, .. } if *t == topic.topic))
            .count()
    }

    async fn settled(&self, topic: &Topic, id: Uuid) -> bool {
        let trace = self.broker().broker().trace(id);
        let acked = trace
            .iter()
            .any(|e| matches!(&e.kind, TraceKind::Acked { group, .. } if *group == topic.group));
        acked || self.dead_letters(topic).await.contains(&id)
    }

    async fn kill(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await.unwrap();
        }
    }

    async fn restart(&mut self) {
        assert!(self.broker.is_none(), "the broker is still running");
        let broker = embedded::start(self.dir.path(), self.config.clone())
            .await
            .unwrap();
        self.broker = Some(broker);
    }
}
