//! Consumer offsets on disk: every group's cursors (next offset, the unsettled offsets with their
//! reconsume counts and due times, and the offsets acked out of order as ranges), saved as one
//! atomic JSON checkpoint (`broker-offsets`).
//!
//! On load, messages that were in flight become due at once: they are delivered again (at least
//! once).
//!
//! # Offsets ahead of the recovered log (issue 12, item 5)
//!
//! The checkpoint is fsynced on its own schedule, independent of the log's. Under `ASYNC_FLUSH`
//! a power cut loses the log's unsynced tail, while a checkpoint saved after consumers read that
//! tail survives: its cursors point past the end of the recovered log. Restored unchecked, the
//! messages sent after the restart got the lost offsets again and were skipped (below `next`) or
//! taken as acked (in an acked range) without ever being delivered. So on open
//! ([`clamp_to_log`]) every cursor is cut back to its queue's recovered end: `next` is lowered,
//! the pending and acked entries at or above the end are dropped, and so are the re-driven marks
//! of the dead-letter queue above its end. What the cut removes was lost with the log tail; it
//! is logged per queue and counted in `broker_lite_offsets_lost_in_recovery_total{group}` (the
//! offsets a group had reached that the log no longer holds). The broker saves the clamped
//! offsets before it serves anything, so a crash right after cannot bring the stale ones back.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Broker;
use super::consumer::MessageModel;
use super::cursor::{Cursor, Pending, Slot};
use super::error::{BrokerError, Result};
use super::group::{CursorKey, Group};
use crate::storage::Store;

pub(crate) const CHECKPOINT: &str = "broker-offsets";

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    groups: BTreeMap<String, SavedGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedGroup {
    model: MessageModel,
    topics: Vec<String>,
    redriven: Vec<u64>,
    cursors: Vec<SavedCursor>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedCursor {
    topic: String,
    queue_id: u32,
    member: Option<String>,
    next: u64,
    /// Unsettled offsets.
    pending: Vec<SavedPending>,
    /// Offsets acked above the committed one, as `[start, end)` ranges.
    #[serde(default)]
    acked: Vec<(u64, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedPending {
    offset: u64,
    /// When it is due again; 0 for "at once".
    due_ms: u64,
    attempts: u32,
    reconsume_times: u32,
    first_delivered_ms: u64,
    #[serde(default)]
    message_id: Option<uuid::Uuid>,
}

fn corrupt(reason: impl ToString) -> BrokerError {
    BrokerError::CorruptState {
        name: CHECKPOINT.into(),
        reason: reason.to_string(),
    }
}

/// Loads the saved groups (without members: they subscribe again).
pub(crate) async fn load(store: &Store) -> Result<BTreeMap<String, Group>> {
    let Some(bytes) = store.load_checkpoint(CHECKPOINT).await? else {
        return Ok(BTreeMap::new());
    };
    let saved: Saved = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if saved.version != 1 {
        return Err(corrupt(format!("unknown version {}", saved.version)));
    }
    let mut groups = BTreeMap::new();
    for (name, g) in saved.groups {
        let mut group = Group::new(g.model);
        group.topics = g.topics.into_iter().collect();
        group.redriven = g.redriven.into_iter().collect();
        for c in g.cursors {
            let mut cursor = Cursor::at(c.next);
            for (start, end) in c.acked {
                for offset in start..end.min(c.next) {
                    cursor.pending.insert(
                        offset,
                        Pending {
                            slot: Slot::Acked,
                            attempts: 0,
                            reconsume_times: 0,
                            first_delivered_ms: 0,
                            message_id: None,
                        },
                    );
                }
            }
            for p in c.pending {
                cursor.pending.insert(
                    p.offset,
                    Pending {
                        slot: Slot::Waiting { due_ms: p.due_ms },
                        attempts: p.attempts,
                        reconsume_times: p.reconsume_times,
                        first_delivered_ms: p.first_delivered_ms,
                        message_id: p.message_id,
                    },
                );
            }
            let key = CursorKey {
                topic: c.topic,
                queue_id: c.queue_id,
                member: c.member,
            };
            group.cursors.insert(key, cursor);
        }
        groups.insert(name, group);
    }
    Ok(groups)
}

/// Cuts every cursor back to the end of its queue in `store` (see the [module docs](self)).
/// Returns how many offsets were cut, over all groups.
pub(crate) fn clamp_to_log(store: &Store, groups: &mut BTreeMap<String, Group>) -> u64 {
    let mut total = 0;
    for (name, group) in groups.iter_mut() {
        let mut lost = 0;
        for (key, cursor) in group.cursors.iter_mut() {
            let end = store
                .queue_bounds(&key.topic, key.queue_id)
                .map_or(0, |b| b.max);
            if cursor.next <= end {
                continue;
            }
            let cut = cursor.next - end;
            tracing::error!(group = %name, topic = %key.topic, queue_id = key.queue_id,
                saved_next = cursor.next, log_end = end, lost = cut,
                "consumer offset ahead of the recovered log (its tail was lost, e.g. in a power cut \
                 under ASYNC_FLUSH); resuming at the log's end");
            cursor.pending.split_off(&end);
            cursor.next = end;
            lost += cut;
        }
        let dlq_end = store
            .queue_bounds(&super::topics::dlq_topic(name), 0)
            .map_or(0, |b| b.max);
        group.redriven.split_off(&dlq_end);
        if lost > 0 {
            metrics::counter!("broker_lite_offsets_lost_in_recovery_total", "group" => name.clone())
                .increment(lost);
        }
        total += lost;
    }
    total
}

/// The acked offsets of a cursor as `[start, end)` ranges.
fn acked_ranges(c: &Cursor) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (offset, p) in &c.pending {
        if p.slot != Slot::Acked {
            continue;
        }
        match ranges.last_mut() {
            Some((_, end)) if *end == *offset => *end += 1,
            _ => ranges.push((*offset, offset + 1)),
        }
    }
    ranges
}

fn snapshot(groups: &BTreeMap<String, Group>) -> Saved {
    let groups = groups
        .iter()
        .map(|(name, g)| {
            let cursors = g
                .cursors
                .iter()
                .map(|(k, c)| SavedCursor {
                    topic: k.topic.clone(),
                    queue_id: k.queue_id,
                    member: k.member.clone(),
                    next: c.next,
                    acked: acked_ranges(c),
                    pending: c
                        .pending
                        .iter()
                        .filter(|(_, p)| p.slot != Slot::Acked)
                        .map(|(offset, p)| SavedPending {
                            offset: *offset,
                            due_ms: match p.slot {
                                Slot::Waiting { due_ms } => due_ms,
                                _ => 0,
                            },
                            attempts: p.attempts,
                            reconsume_times: p.reconsume_times,
                            first_delivered_ms: p.first_delivered_ms,
                            message_id: p.message_id,
                        })
                        .collect(),
                })
                .collect();
            let saved = SavedGroup {
                model: g.model,
                topics: g.topics.iter().cloned().collect(),
                redriven: g.redriven.iter().copied().collect(),
                cursors,
            };
            (name.clone(), saved)
        })
        .collect();
    Saved { version: 1, groups }
}

impl Broker {
    /// Saves every group's consumer offsets now (the background task does it every
    /// [`offsets_save_interval`](super::BrokerConfig::offsets_save_interval) when they changed,
    /// and [`close`](Self::close) does it last).
    ///
    /// # Errors
    /// [`BrokerError::Storage`] when the checkpoint cannot be written (the previous one stays).
    pub async fn save_offsets(&self) -> Result<()> {
        self.check_open()?;
        self.save_offsets_now().await
    }

    pub(crate) async fn save_offsets_now(&self) -> Result<()> {
        let _guard = self.inner.save_lock.lock().await;
        self.inner.offsets_dirty.store(false, Ordering::SeqCst);
        let bytes = {
            let state = self.inner.state.lock().unwrap();
            serde_json::to_vec(&snapshot(&state.groups)).expect("offsets serialize")
        };
        if let Err(e) = self
            .inner
            .store
            .save_checkpoint(CHECKPOINT, Bytes::from(bytes))
            .await
        {
            self.mark_dirty();
            tracing::warn!(error = %e, "could not save consumer offsets");
            return Err(e.into());
        }
        Ok(())
    }

    /// Saves the offsets if they changed since the last save.
    pub(crate) async fn save_offsets_if_dirty(&self) -> Result<()> {
        if self.inner.offsets_dirty.load(Ordering::SeqCst) {
            self.save_offsets_now().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::cursor::Holder;

    #[test]
    fn snapshot_round_trip_keeps_acked_ranges_and_retries() {
        let mut c = Cursor::at(0);
        let to = Holder {
            client_id: "a",
            now_ms: 5,
            deadline_ms: 100,
        };
        c.reserve_new(10, 6, false, 100, to);
        for o in [1, 2, 4] {
            c.ack(o);
        }
        c.wait(3, 77, true);
        let mut g = Group::new(MessageModel::Clustering);
        let key = CursorKey {
            topic: "t".into(),
            queue_id: 0,
            member: None,
        };
        g.cursors.insert(key.clone(), c.clone());
        let saved = snapshot(&BTreeMap::from([("g".to_string(), g)]));
        let cursor = &saved.groups["g"].cursors[0];
        assert_eq!(cursor.acked, [(1, 3), (4, 5)]);
        assert_eq!(cursor.pending.len(), 3);
        let json = serde_json::to_vec(&saved).unwrap();
        let back: Saved = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.groups["g"].cursors[0].next, 6);
        assert_eq!(back.groups["g"].cursors[0].pending[1].due_ms, 77);
    }
}
