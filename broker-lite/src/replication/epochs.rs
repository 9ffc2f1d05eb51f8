//! The epoch history: one entry per leadership, `(epoch, start position)`, oldest first, saved
//! atomically as the store checkpoint `replication-epochs`.
//!
//! A node that becomes leader appends `(last epoch + 1, its log end)`; a follower copies its
//! leader's history. Comparing histories tells where two logs may differ: everything a node wrote
//! in epoch `e` at or past the start of the next epoch in the leader's history was never part of
//! the leader's log (Kafka's leader epoch cache, RocketMQ 5's epoch file).

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::EpochStart;
use crate::storage::{StorageError, Store};

/// The checkpoint name of the epoch history.
pub(crate) const CHECKPOINT: &str = "replication-epochs";

/// Loads the history; empty for a store that never had a role.
pub(crate) async fn load(store: &Store) -> Result<Vec<EpochStart>, StorageError> {
    let Some(mut bytes) = store.load_checkpoint(CHECKPOINT).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let epoch = u64::from_be_bytes(bytes[..8].try_into().unwrap());
        let start_position = u64::from_be_bytes(bytes[8..16].try_into().unwrap());
        out.push(EpochStart {
            epoch,
            start_position,
        });
        bytes = bytes.slice(16..);
    }
    Ok(out)
}

/// Saves the history (atomically: the checkpoint is replaced, never half written).
pub(crate) async fn save(store: &Store, epochs: &[EpochStart]) -> Result<(), StorageError> {
    let mut buf = BytesMut::with_capacity(epochs.len() * 16);
    for e in epochs {
        buf.put_u64(e.epoch);
        buf.put_u64(e.start_position);
    }
    store.save_checkpoint(CHECKPOINT, Bytes::from(buf)).await
}

/// The newest epoch of a history, 0 when empty.
pub(crate) fn current(epochs: &[EpochStart]) -> u64 {
    epochs.last().map_or(0, |e| e.epoch)
}

/// Where epoch `epoch` ends in `history`: the start of the first later epoch, `None` when it is
/// the history's current epoch (it has not ended) or the history has no later epoch.
pub(crate) fn end_of(history: &[EpochStart], epoch: u64) -> Option<u64> {
    history
        .iter()
        .find(|e| e.epoch > epoch)
        .map(|e| e.start_position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: u64, start_position: u64) -> EpochStart {
        EpochStart {
            epoch,
            start_position,
        }
    }

    #[test]
    fn an_epoch_ends_where_the_next_one_starts() {
        let h = [e(1, 0), e(2, 500), e(4, 900)];
        assert_eq!(end_of(&h, 1), Some(500));
        assert_eq!(end_of(&h, 2), Some(900));
        assert_eq!(end_of(&h, 3), Some(900));
        assert_eq!(end_of(&h, 4), None);
        assert_eq!(current(&h), 4);
    }

    #[tokio::test]
    async fn the_history_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::storage::StoreConfig {
            segment_size: 64 * 1024,
            max_record_size: 16 * 1024,
            ..Default::default()
        };
        let store = Store::open(dir.path(), config.clone()).await.unwrap();
        save(&store, &[e(1, 0), e(2, 77)]).await.unwrap();
        store.close().await.unwrap();
        let store = Store::open(dir.path(), config).await.unwrap();
        assert_eq!(load(&store).await.unwrap(), vec![e(1, 0), e(2, 77)]);
    }
}
