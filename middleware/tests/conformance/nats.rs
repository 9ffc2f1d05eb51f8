//! NATS JetStream: a nats-server of the test's own (`/usr/sbin/nats-server`, or `NATS_SERVER`) on
//! a free port with its own store directory, so that it can be killed with SIGKILL and restarted
//! on the same port and data. The shared server on 4222 is never touched.

use std::time::Duration;

use async_nats::jetstream;
use courier_middleware::nats::{
    NATS_DEAD_LETTER_GROUP_HEADER, NATS_MESSAGE_ID_HEADER, NATS_MSG_ID_HEADER, NatsPublisher,
    NatsSource, NatsSourceConfig, StreamSpec,
};
use uuid::Uuid;

use crate::harness::{Adapter, Promises, Topic};
use crate::nats_support::NatsServer;

pub(crate) struct Nats {
    server: NatsServer,
    jetstream: jetstream::Context,
}

/// The stream of a test's topic.
fn stream_of(topic: &Topic) -> String {
    topic.topic.replace('.', "_").to_uppercase()
}

impl Nats {
    /// Every message of `stream` (empty when it does not exist).
    async fn messages(&self, stream: &str) -> Vec<jetstream::message::StreamMessage> {
        let Ok(mut stream) = self.jetstream.get_stream(stream).await else {
            return Vec::new();
        };
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                out.push(message);
            }
        }
        out
    }
}

impl Adapter for Nats {
    type Publisher = NatsPublisher;
    type Source = NatsSource;

    const PROMISES: Promises = Promises {
        deduplicates_publishes: true,
    };

    async fn start() -> Self {
        let server = NatsServer::start();
        let jetstream = server.ready().await;
        Self { server, jetstream }
    }

    async fn topic(&self, case: &str) -> Topic {
        let topic = Topic::unique(case);
        StreamSpec::new(stream_of(&topic), [topic.topic.clone()])
            .ensure(&self.jetstream)
            .await
            .unwrap();
        topic
    }

    async fn publisher(&self) -> NatsPublisher {
        NatsPublisher::connect(&self.server.url())
            .await
            .unwrap()
            .with_ack_timeout(Duration::from_secs(2))
    }

    async fn source(&self, topic: &Topic) -> NatsSource {
        let config = NatsSourceConfig::new(stream_of(topic), topic.group.clone())
            .ack_wait(Duration::from_secs(2))
            .delays([100, 200, 300].map(Duration::from_millis));
        NatsSource::new(self.jetstream.clone(), config)
            .await
            .unwrap()
    }

    async fn dead_letters(&self, topic: &Topic) -> Vec<Uuid> {
        let stream = format!("{}_DEAD_LETTERS", stream_of(topic));
        self.messages(&stream)
            .await
            .into_iter()
            .filter(|m| {
                m.headers
                    .get(NATS_DEAD_LETTER_GROUP_HEADER)
                    .is_some_and(|g| g.as_str() == topic.group)
            })
            .filter_map(|m| m.headers.get(NATS_MESSAGE_ID_HEADER)?.as_str().parse().ok())
            .collect()
    }

    async fn stored_copies(&self, topic: &Topic, id: Uuid) -> usize {
        let id = id.to_string();
        self.messages(&stream_of(topic))
            .await
            .iter()
            .filter(|m| {
                m.headers
                    .get(NATS_MSG_ID_HEADER)
                    .is_some_and(|v| v.as_str() == id)
            })
            .count()
    }

    async fn settled(&self, topic: &Topic, id: Uuid) -> bool {
        let wanted = id.to_string();
        let messages = self.messages(&stream_of(topic)).await;
        let Some(sequence) = messages
            .iter()
            .find(|m| {
                m.headers
                    .get(NATS_MSG_ID_HEADER)
                    .is_some_and(|v| v.as_str() == wanted)
            })
            .map(|m| m.sequence)
        else {
            return false;
        };
        let Ok(stream) = self.jetstream.get_stream(stream_of(topic)).await else {
            return false;
        };
        match stream.consumer_info(&topic.group).await {
            // Acked or terminated, and so was everything before it.
            Ok(info) => info.ack_floor.stream_sequence >= sequence,
            Err(_) => false,
        }
    }

    async fn kill(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        self.server.restart().await;
    }
}
