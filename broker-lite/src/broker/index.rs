//! The broker's view of the message index. Lookups by message id and by (topic, key) go to the
//! store's on-disk id index ([`Store::find_by_id`], [`Store::find_by_key`]), which holds no
//! per-message state in memory; what stays here is the bounded deduplication window of recent
//! producer sends (see the `dedupe` module), rebuilt on open from the newest records of the log
//! only, not by reading every queue.

use super::error::Result;
use crate::storage::Store;

/// Most messages returned for one (topic, key) lookup.
pub(crate) const MAX_PER_KEY: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct MessageIndex {
    /// Recent producer sends, for deduplication by message id.
    pub(crate) sent: super::dedupe::SendWindow,
}

impl MessageIndex {
    /// Forgets every position below `start` (removed by retention).
    pub(crate) fn prune_below(&mut self, start: u64) {
        self.sent.prune_below(start);
    }
}

/// Rebuilds the deduplication window from the newest [`WINDOW`](super::dedupe::WINDOW) records
/// of the log.
pub(crate) async fn rebuild(store: &Store) -> Result<MessageIndex> {
    let mut index = MessageIndex::default();
    let end = store.durable_position();
    let mut from = store.recent_position(super::dedupe::WINDOW);
    while from < end {
        let chunk = store.read_log(from, 16 << 20).await?;
        if chunk.next_position <= from {
            break;
        }
        from = chunk.next_position;
        for r in chunk.records.iter().filter(|r| !r.topic.starts_with('%')) {
            index.sent.insert(
                r.message_id,
                &r.topic,
                r.queue_id,
                r.queue_offset,
                r.log_position,
            );
        }
    }
    Ok(index)
}
