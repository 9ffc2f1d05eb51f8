//! RabbitMQ: the shared broker on AMQP_URL, reached through a TCP proxy the test owns, so that
//! "killing" the broker is cutting every connection and closing the port (the broker's data is
//! untouched, as after a restart), and "restarting" it is opening the port again. Each test has
//! its own exchange, queue, delay queues and dead-letter queue, deleted when the adapter drops.
//!
//! AMQP cannot ask the broker whether a message was acked, so [`RabbitMq::settled`] is answered
//! from the source's side: an ack the source sent (through [`Recording`]) or a copy in the
//! dead-letter queue.

#[path = "../rabbitmq_support/mod.rs"]
mod rabbitmq_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_middleware::lapin::options::{BasicGetOptions, BasicNackOptions};
use courier_middleware::{
    DeliverySource, NackOutcome, Pulled, RabbitMqPublisher, RabbitMqReceipt, RabbitMqSource,
    RabbitMqSourceConfig,
};
use uuid::Uuid;

use crate::harness::{Adapter, Promises, Topic};
use rabbitmq_support::{Admin, Proxy};

pub(crate) struct RabbitMq {
    proxy: Proxy,
    admin: Admin,
    acked: Arc<Mutex<BTreeSet<Uuid>>>,
    dead: Mutex<BTreeMap<String, Vec<Uuid>>>,
}

impl RabbitMq {
    fn config(topic: &Topic) -> RabbitMqSourceConfig {
        RabbitMqSourceConfig::new(topic.group.clone())
            .bind(topic.topic.clone(), "#")
            .delay_levels([100, 200, 300, 500, 1000].map(Duration::from_millis))
    }

    fn id_of(delivery: &courier_middleware::lapin::message::Delivery) -> Option<Uuid> {
        let id = delivery.properties.message_id().as_ref()?;
        Uuid::parse_str(id.as_str()).ok()
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.admin.cleanup_blocking();
    }
}

impl Adapter for RabbitMq {
    type Publisher = RabbitMqPublisher;
    type Source = Recording;

    // RabbitMQ stores a message published twice twice (AMQP has no idempotent publish).
    const PROMISES: Promises = Promises {
        deduplicates_publishes: false,
    };

    async fn start() -> Self {
        Self {
            proxy: Proxy::start().await,
            admin: Admin::connect().await,
            acked: Arc::default(),
            dead: Mutex::default(),
        }
    }

    async fn topic(&self, case: &str) -> Topic {
        let topic = Topic::unique(case);
        let config = Self::config(&topic);
        self.admin.owns(&config);
        config
            .topology()
            .declare_on(self.admin.connection())
            .await
            .unwrap();
        topic
    }

    async fn publisher(&self) -> RabbitMqPublisher {
        // Connects on the first publish, so that a publisher can be had while the broker is down.
        RabbitMqPublisher::new(self.proxy.url())
    }

    async fn source(&self, topic: &Topic) -> Recording {
        let source = RabbitMqSource::connect(self.proxy.url(), Self::config(topic))
            .await
            .unwrap();
        Recording {
            source,
            acked: self.acked.clone(),
        }
    }

    async fn dead_letters(&self, topic: &Topic) -> Vec<Uuid> {
        let queue = Self::config(topic).dead_letter_queue();
        let taken: Vec<Uuid> = self
            .admin
            .drain(&queue)
            .await
            .iter()
            .filter_map(Self::id_of)
            .collect();
        let mut dead = self.dead.lock().unwrap();
        let letters = dead.entry(queue).or_default();
        letters.extend(taken);
        letters.clone()
    }

    async fn stored_copies(&self, topic: &Topic, id: Uuid) -> usize {
        // Look at every ready message without consuming it: get them unacked, then put them back.
        let channel = self.admin.channel().await;
        let mut copies = 0;
        let mut last_tag = None;
        while let Some(message) = channel
            .basic_get(&topic.group, BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        {
            copies += usize::from(Self::id_of(&message.delivery) == Some(id));
            last_tag = Some(message.delivery.acker);
        }
        if let Some(acker) = last_tag {
            let options = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            acker.nack(options).await.unwrap();
        }
        copies
    }

    async fn settled(&self, topic: &Topic, id: Uuid) -> bool {
        self.acked.lock().unwrap().contains(&id) || self.dead_letters(topic).await.contains(&id)
    }

    async fn kill(&mut self) {
        self.proxy.cut();
    }

    async fn restart(&mut self) {
        self.proxy.restore().await;
    }
}

/// The RabbitMQ source, remembering which message ids it acked.
pub(crate) struct Recording {
    source: RabbitMqSource,
    acked: Arc<Mutex<BTreeSet<Uuid>>>,
}

impl DeliverySource for Recording {
    type Receipt = RabbitMqReceipt;
    type Error = courier_middleware::RabbitMqError;

    async fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Pulled<RabbitMqReceipt>>, Self::Error> {
        self.source.pull(max, wait).await
    }

    async fn ack(&self, receipt: RabbitMqReceipt) -> Result<(), Self::Error> {
        let id = receipt.message_id();
        self.source.ack(receipt).await?;
        self.acked.lock().unwrap().insert(id);
        Ok(())
    }

    async fn nack(
        &self,
        receipt: RabbitMqReceipt,
        delay: Option<Duration>,
    ) -> Result<NackOutcome, Self::Error> {
        self.source.nack(receipt, delay).await
    }

    async fn dead_letter(
        &self,
        receipt: RabbitMqReceipt,
        reason: String,
    ) -> Result<(), Self::Error> {
        self.source.dead_letter(receipt, reason).await
    }

    fn group(&self) -> Option<&str> {
        self.source.group()
    }

    fn redelivery_horizon(&self) -> Option<Duration> {
        self.source.redelivery_horizon()
    }
}
