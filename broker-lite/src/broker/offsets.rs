//! Consumer offsets on disk: every group's cursors (committed position, acked-out-of-order
//! offsets, reconsume counts and due times of messages waiting for redelivery), saved as one
//! atomic checkpoint.
//!
//! On load, messages that were in flight become due at once: they are delivered again (at least
//! once).

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

const CHECKPOINT: &str = "broker-offsets";

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
    pending: Vec<SavedPending>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedPending {
    offset: u64,
    acked: bool,
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
            for p in c.pending {
                let slot = if p.acked {
                    Slot::Acked
                } else {
                    Slot::Waiting { due_ms: p.due_ms }
                };
                cursor.pending.insert(
                    p.offset,
                    Pending {
                        slot,
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
                    pending: c
                        .pending
                        .iter()
                        .map(|(offset, p)| SavedPending {
                            offset: *offset,
                            acked: p.slot == Slot::Acked,
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
