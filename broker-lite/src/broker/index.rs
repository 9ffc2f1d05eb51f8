//! The in-memory message index for admin lookups: message id and (topic, key) to log position.
//! Rebuilt from the log when the broker opens.

use std::collections::HashMap;

use uuid::Uuid;

use super::error::Result;
use crate::storage::Store;

/// Most positions remembered per (topic, key); older ones are dropped first.
const MAX_PER_KEY: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct MessageIndex {
    by_id: HashMap<Uuid, u64>,
    by_key: HashMap<(String, String), Vec<u64>>,
    /// Recent producer sends, for deduplication by message id.
    pub(crate) sent: super::dedupe::SendWindow,
}

impl MessageIndex {
    /// Records a stored message; the first position of an id wins (dead-letter and redriven
    /// copies keep the id of the original).
    pub(crate) fn insert(&mut self, id: Uuid, topic: &str, key: Option<&str>, position: u64) {
        self.by_id.entry(id).or_insert(position);
        if let Some(key) = key {
            let positions = self
                .by_key
                .entry((topic.to_string(), key.to_string()))
                .or_default();
            if positions.len() >= MAX_PER_KEY {
                positions.remove(0);
            }
            positions.push(position);
        }
    }

    /// Forgets every position below `start` (removed by retention).
    pub(crate) fn prune_below(&mut self, start: u64) {
        self.by_id.retain(|_, p| *p >= start);
        self.sent.prune_below(start);
        self.by_key.retain(|_, positions| {
            positions.retain(|p| *p >= start);
            !positions.is_empty()
        });
    }

    pub(crate) fn by_id(&self, id: &Uuid) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// Newest first.
    pub(crate) fn by_key(&self, topic: &str, key: &str, limit: usize) -> Vec<u64> {
        self.by_key
            .get(&(topic.to_string(), key.to_string()))
            .map(|p| p.iter().rev().take(limit).copied().collect())
            .unwrap_or_default()
    }
}

/// Reads every queue once to rebuild the index.
pub(crate) async fn rebuild(store: &Store) -> Result<MessageIndex> {
    let mut index = MessageIndex::default();
    for (topic, queue_id) in store.queues() {
        let Some(bounds) = store.queue_bounds(&topic, queue_id) else {
            continue;
        };
        let mut from = bounds.min;
        while from < bounds.max {
            let records = store
                .read_queue(&topic, queue_id, from, 4096, 16 << 20)
                .await?;
            let Some(last) = records.last() else { break };
            from = last.queue_offset + 1;
            for r in &records {
                index.insert(r.message_id, &r.topic, r.key.as_deref(), r.log_position);
                if !r.topic.starts_with('%') {
                    index.sent.insert(
                        r.message_id,
                        &r.topic,
                        r.queue_id,
                        r.queue_offset,
                        r.log_position,
                    );
                }
            }
        }
    }
    Ok(index)
}
