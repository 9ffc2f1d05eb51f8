//! Topics and their queue counts, persisted in the `topics` checkpoint.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::error::{BrokerError, Result};
use super::{Broker, State};
use crate::storage::Store;

pub(crate) const CHECKPOINT: &str = "broker-topics";

/// A topic and its number of queues: the wire type, one definition for the broker and its
/// clients.
pub use broker_lite_client::protocol::TopicInfo;

/// The prefix of a group's dead-letter topic.
pub(crate) const DLQ_PREFIX: &str = "%DLQ%";

/// The dead-letter topic of `group`.
pub(crate) fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// Checks a user-given topic or group name.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let bad = |why| Err(BrokerError::InvalidName(name.to_string(), why));
    if name.is_empty() || name.len() > 255 {
        return bad("names are 1 to 255 bytes long");
    }
    if name.starts_with('%') {
        return bad("names starting with '%' are reserved for the broker");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("names may not contain whitespace or control characters");
    }
    Ok(())
}

pub(crate) async fn load(store: &Store) -> Result<BTreeMap<String, u32>> {
    let Some(bytes) = store.load_checkpoint(CHECKPOINT).await? else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_slice(&bytes).map_err(|e| BrokerError::CorruptState {
        name: CHECKPOINT.into(),
        reason: e.to_string(),
    })
}

impl Broker {
    /// Creates a topic with `queues` queues; creating an existing topic with the same count is a
    /// no-op. The topic list survives restarts.
    ///
    /// # Errors
    /// [`BrokerError::InvalidName`]; [`BrokerError::TopicExists`] when it exists with another
    /// count; [`BrokerError::InvalidRequest`] for zero queues; [`BrokerError::Storage`] when the
    /// topic list cannot be saved.
    ///
    /// # Examples
    /// ```
    /// # async fn f(broker: broker_lite::broker::Broker) -> broker_lite::broker::Result<()> {
    /// let info = broker.create_topic("orders", 8).await?;
    /// assert_eq!(info.queues, 8);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_topic(&self, name: &str, queues: u32) -> Result<TopicInfo> {
        self.check_open()?;
        check_name(name)?;
        self.create_topic_unchecked(name, queues).await
    }

    pub(crate) async fn create_topic_unchecked(
        &self,
        name: &str,
        queues: u32,
    ) -> Result<TopicInfo> {
        if queues == 0 || queues > 1024 {
            return Err(BrokerError::InvalidRequest(
                "a topic has 1 to 1024 queues".into(),
            ));
        }
        {
            let mut state = self.inner.state.lock().unwrap();
            match state.topics.get(name) {
                Some(&q) if q == queues => {
                    return Ok(TopicInfo {
                        name: name.into(),
                        queues,
                    });
                }
                Some(&q) => {
                    return Err(BrokerError::TopicExists {
                        topic: name.into(),
                        queues: q,
                    });
                }
                None => {
                    state.topics.insert(name.to_string(), queues);
                }
            }
        }
        self.save_topics().await?;
        tracing::info!(topic = name, queues, "topic created");
        Ok(TopicInfo {
            name: name.into(),
            queues,
        })
    }

    /// Every topic with its queue count, sorted by name (dead-letter topics included).
    pub fn topics(&self) -> Vec<TopicInfo> {
        self.inner
            .state
            .lock()
            .unwrap()
            .topics
            .iter()
            .map(|(name, &queues)| TopicInfo {
                name: name.clone(),
                queues,
            })
            .collect()
    }

    /// Whether `topic` exists.
    pub(crate) fn has_topic(&self, topic: &str) -> bool {
        self.inner.state.lock().unwrap().topics.contains_key(topic)
    }

    /// The queue count of `topic`, creating it when allowed.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<u32> {
        if let Some(&q) = self.inner.state.lock().unwrap().topics.get(topic) {
            return Ok(q);
        }
        if !self.inner.config.auto_create_topics {
            return Err(BrokerError::UnknownTopic(topic.to_string()));
        }
        check_name(topic)?;
        match self
            .create_topic_unchecked(topic, self.inner.config.default_queues)
            .await
        {
            Ok(info) => Ok(info.queues),
            Err(BrokerError::TopicExists { queues, .. }) => Ok(queues),
            Err(e) => Err(e),
        }
    }

    async fn save_topics(&self) -> Result<()> {
        let _guard = self.inner.save_lock.lock().await;
        let bytes = {
            let state: &State = &self.inner.state.lock().unwrap();
            serde_json::to_vec(&state.topics).expect("a map of strings to numbers serializes")
        };
        self.inner
            .store
            .save_checkpoint(CHECKPOINT, Bytes::from(bytes))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("orders.v1-x_y").is_ok());
        for bad in ["", "%DLQ%x", "a b", "a\n"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
